import jax
import jax.numpy as jnp
import librosa
import ml_collections
import numpy as np

from stalign.data import features

CONFIG = ml_collections.ConfigDict(dict(sample_rate=16000, num_mels=80, win_ms=25.0, hop_ms=10.0))


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


def test_spec_augment_is_seeded_and_masks_inside_real_frames():
  x = jnp.ones((4, 100, 80))
  lengths = jnp.array([100, 50, 30, 100])
  kw = dict(freq_masks=2, freq_width=10, time_masks=2, time_width=10)
  a = features.spec_augment(x, lengths, jax.random.key(0), **kw)
  b = features.spec_augment(x, lengths, jax.random.key(0), **kw)
  c = features.spec_augment(x, lengths, jax.random.key(1), **kw)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert 0 < float((a == 0).mean()) < 0.5
  # Time masks fall inside each utterance: a fully masked frame beyond the length never occurs.
  masked_frames = np.asarray((a == 0).all(axis=2))
  for i, n in enumerate(lengths):
    assert not masked_frames[i, int(n) + 10 :].any()
