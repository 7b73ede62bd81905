import jax
import jax.numpy as jnp
import librosa
import ml_collections
import numpy as np

from stalign.data import features

CONFIG = ml_collections.ConfigDict(dict(sample_rate=16000, num_mels=80, win_ms=25.0, hop_ms=10.0))


def test_featurize_removes_a_dc_offset_only_when_asked():
  """FSDD's nicolas records with a DC offset of 15% of his RMS; the front end removes it."""
  t = np.arange(8000) / 16000
  speech = (0.1 * np.sin(2 * np.pi * 440 * t) * np.hanning(t.size)).astype(np.float32)
  offset = speech - 0.03
  on = ml_collections.ConfigDict({**CONFIG, "remove_dc": True})
  off = ml_collections.ConfigDict({**CONFIG, "remove_dc": False})
  clean = features.featurize(speech, on).astype(np.float32)
  np.testing.assert_allclose(features.featurize(offset, on).astype(np.float32), clean, atol=0.02)
  # Kept, the offset fills the lowest band with energy the clean clip does not have.
  kept = features.featurize(offset, off).astype(np.float32)
  assert (kept[:, 0] - clean[:, 0]).mean() > 5
  np.testing.assert_allclose(features.featurize(speech - speech.mean(), off), clean)


def test_log_mel_matches_librosa_within_1e_4():
  """Stated tolerance: max abs difference of natural-log mel energies < 1e-4."""
  rng = np.random.default_rng(0)
  for n in (16000, 16000 * 2 + 123):
    y = (rng.standard_normal(n) * 0.1).astype(np.float32)
    ref = librosa.feature.melspectrogram(
      y=y, sr=16000, n_fft=400, hop_length=160, n_mels=80, center=True, pad_mode="constant"
    )
    ours = np.asarray(jax.jit(lambda w: features.log_mel(w, CONFIG))(y))
    assert ours.shape == (features.num_frames(n, 160), 80)
    np.testing.assert_allclose(ours, np.log(ref.T + features.LOG_FLOOR), atol=1e-4)


def test_spec_augment_is_seeded_and_masks_inside_real_frames_with_their_mean():
  """A masked cell holds the mean of its utterance's real frames: not 0, not the padding."""
  lengths = jnp.array([100, 50, 30, 100])
  real = np.arange(100)[None, :, None] < np.asarray(lengths)[:, None, None]
  noise = np.random.default_rng(0).normal(-8.0, 1.0, (4, 100, 80)).astype(np.float32)
  x = jnp.asarray(np.where(real, noise, np.log(features.LOG_FLOOR)))
  kw = dict(freq_masks=2, freq_width=10, time_masks=2, time_width=10)
  a = np.asarray(features.spec_augment(x, lengths, jax.random.key(0), **kw))
  b = features.spec_augment(x, lengths, jax.random.key(0), **kw)
  c = features.spec_augment(x, lengths, jax.random.key(1), **kw)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  masked = a != np.asarray(x)
  assert 0 < masked.mean() < 0.5
  means = np.array([noise[i, :n].mean() for i, n in enumerate(np.asarray(lengths))])
  np.testing.assert_allclose(
    a[masked], np.broadcast_to(means[:, None, None], a.shape)[masked], atol=1e-4
  )
  # Time masks fall inside each utterance (a frame masked in every band is a time mask's: the
  # frequency masks cover at most 20 of 80), and reach its last real frames: over 20 draws the
  # masked frames of the 30- and 50-frame rows end just inside their lengths, never beyond.
  last = {30: [], 50: []}
  for seed in range(20):
    keyed = np.asarray(features.spec_augment(x, lengths, jax.random.key(seed), **kw))
    frames = (keyed != np.asarray(x)).all(axis=2)
    for i, n in enumerate(np.asarray(lengths)):
      assert not frames[i, n:].any(), (seed, i)
      if n in last and frames[i].any():
        last[n].append(np.flatnonzero(frames[i])[-1])
  assert max(last[30]) >= 27 and max(last[50]) >= 47, last


def test_mel_centres_follow_the_filterbank_peaks():
  centres = features.mel_centres_hz(16000, 80)
  assert np.all(np.diff(centres) > 0)
  fft_hz = np.linspace(0, 8000, 201)
  peaks = fft_hz[features._mel_matrix(16000, 400, 80).argmax(axis=0)]
  np.testing.assert_allclose(centres[20:], peaks[20:], atol=40)  # One FFT bin of 40 Hz.


def _augment(x, key, **overrides):
  kw = dict(warp=0.0, eq_db=0.0, lowpass_prob=0.0, lowpass_hz=(3400.0, 4600.0)) | overrides
  return np.asarray(features.channel_augment(jnp.asarray(x), jax.random.key(key), CONFIG, **kw))


def test_channel_augment_off_is_identity_and_each_part_does_what_it_says():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 20, 80)).astype(np.float32)
  np.testing.assert_array_equal(_augment(x, 0), x)
  np.testing.assert_allclose(_augment(x, 0, warp=1e-7), x, atol=1e-3)

  # Band-limiting: every utterance silent (log floor) above a cutoff inside lowpass_hz, in
  # every frame; the bands below 3.4 kHz untouched.
  low = _augment(x, 0, lowpass_prob=1.0)
  centres = features.mel_centres_hz(16000, 80)
  floor = np.float32(np.log(features.LOG_FLOOR))
  silent = (low == floor).all(axis=1)
  assert silent[:, centres > 4600].all() and not silent[:, centres < 3400].any()
  np.testing.assert_array_equal(low[..., centres < 3400], x[..., centres < 3400])
  assert (_augment(x, 0, lowpass_prob=0.5) == floor).all(axis=(1, 2)).sum() == 0
  assert 0 < (_augment(x, 0, lowpass_prob=0.5) == floor).any(axis=(1, 2)).sum() < 8

  # EQ: a gain per band, the same in every frame, within +-eq_db dB (natural-log power).
  gain = _augment(x, 0, eq_db=6.0) - x
  np.testing.assert_allclose(gain, np.broadcast_to(gain[:, :1], gain.shape), atol=1e-5)
  assert 0 < np.abs(gain).max() <= 6.0 * np.log(10) / 10 + 1e-5

  # Warp: a formant moves up when alpha > 1 (spectrum stretched), never outside the band range.
  peak = np.zeros((64, 1, 80), np.float32)
  peak[..., 40] = 1.0
  warped = _augment(peak, 1, warp=0.2)[:, 0]
  moved = warped.argmax(-1)
  assert moved.min() < 40 < moved.max()
  twice = [_augment(x, 3, warp=0.2, eq_db=3.0) for _ in range(2)]
  np.testing.assert_array_equal(*twice)
