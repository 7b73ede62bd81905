"""Log-mel filterbank front end in JAX.

Written in JAX so the same function can run ahead of training (the TFRecord
writer stores features for a fixed corpus) or on device inside a jitted step.
It follows librosa's conventions (centred frames with zero padding, periodic
Hann window, power spectrum, Slaney mel filters from `librosa.filters.mel`), so
features match the reference implementation users know; tests pin the parity.
"""

import functools

import jax
import jax.numpy as jnp
import librosa
import ml_collections
import numpy as np

from stalign import utils

LOG_FLOOR = 1e-6


def frame_params(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(window, hop) in samples for the features config."""
  win = int(round(config.sample_rate * config.win_ms / 1000))
  hop = int(round(config.sample_rate * config.hop_ms / 1000))
  return win, hop


def num_frames(num_samples: int, hop: int) -> int:
  """Frames produced by centred framing of `num_samples` samples."""
  return 1 + num_samples // hop


@functools.lru_cache(maxsize=8)
def _mel_matrix(sample_rate: int, n_fft: int, num_mels: int) -> np.ndarray:
  return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=num_mels).T.astype(np.float32)


def log_mel(waves: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """Float waveforms [..., samples] -> natural-log mel energies [..., frames, mels]."""
  win, hop = frame_params(config)
  pad = win // 2
  padded = jnp.pad(waves, [(0, 0)] * (waves.ndim - 1) + [(pad, pad)])
  frames = 1 + (padded.shape[-1] - win) // hop
  idx = jnp.arange(frames)[:, None] * hop + jnp.arange(win)[None, :]
  window = jnp.asarray(np.hanning(win + 1)[:-1], jnp.float32)  # Periodic Hann.
  spec = jnp.abs(jnp.fft.rfft(padded[..., idx] * window, n=win)) ** 2
  mel = spec @ _mel_matrix(config.sample_rate, win, config.num_mels)
  return jnp.log(mel + LOG_FLOOR)


@functools.lru_cache(maxsize=4)
def _jitted_log_mel(sample_rate: int, win_ms: float, hop_ms: float, num_mels: int):
  config = ml_collections.ConfigDict(
    dict(sample_rate=sample_rate, win_ms=win_ms, hop_ms=hop_ms, num_mels=num_mels)
  )
  return jax.jit(lambda w: log_mel(w, config))


def featurize(wave: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """Log-mel frames [frames, mels] of a checked waveform at the model's rate, as stored.

  The one front end of the TFRecord writer and of inference, so an embedding
  does not depend on whether a clip came from a TFRecord or a wav file. The
  waveform is padded to whole seconds (the jitted transform compiles a bounded
  number of shapes), frames past the real end are cut, and the result is
  rounded to float16 as the TFRecords store it.

  With `remove_dc`, the waveform's mean is subtracted first, as every ASR front end
  does (Kaldi's `remove_dc_offset`): a recording with a DC offset (one of the four
  FSDD voices has one of 15% of its RMS) otherwise puts energy in the lowest mel
  bands that no training clip had, and a step where the zero padding begins.
  """
  if config.remove_dc:
    wave = wave - wave.mean(dtype=np.float64).astype(wave.dtype)
  transform = _jitted_log_mel(config.sample_rate, config.win_ms, config.hop_ms, config.num_mels)
  _, hop = frame_params(config)
  padded = utils.round_up(wave.size, config.sample_rate)
  feats = np.asarray(transform(np.pad(wave, (0, padded - wave.size))))
  return feats[: num_frames(wave.size, hop)].astype(np.float16)


def frame_ms(config: ml_collections.ConfigDict) -> float:
  """Milliseconds between stored frames: the log-mel hop, or twice it after Whisper's encoder.

  Whisper's second convolution has stride 2 (`stalign.models.frontend`), so its frames come
  every 20 ms; bucket boundaries and clip lengths in frames count these.
  """
  return config.hop_ms * (2 if config.frontend == "whisper" else 1)


def bucket_lengths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Padded lengths in stored frames; the last one fits the longest allowed utterance."""
  longest = int(config.features.max_seconds * 1000 / frame_ms(config.features)) + 1
  lengths = sorted({*config.input.bucket_boundaries, longest})
  # Multiples of the frame stacking, so every bucket stacks into whole encoder frames.
  return tuple(utils.round_up(b, config.model.subsample) for b in lengths if b <= longest)


def padded_length(longest: int, buckets: tuple[int, ...], multiple: int) -> int:
  """The smallest bucket that holds `longest` frames (else `longest` rounded up to `multiple`).

  The training input pipeline and inference both pad with this, so a clip is
  embedded at the shape it was trained at.
  """
  return next((b for b in buckets if b >= longest), utils.round_up(int(longest), multiple))


def ctc_frames(num_frames: int, model_config: ml_collections.ConfigDict) -> int:
  """CTC outputs the student emits for `num_frames` feature frames (stacking, then upsampling)."""
  return num_frames // model_config.subsample * model_config.ctc_upsample


def spec_augment(
  features: jax.Array,
  lengths: jax.Array,
  rng: jax.Array,
  *,
  freq_masks: int,
  freq_width: int,
  time_masks: int,
  time_width: int,
) -> jax.Array:
  """SpecAugment (Park et al., 2019): random mel bands and time spans set to the utterance's mean.

  Park et al. mask normalised features with zero, their mean; these log-mels
  are not normalised (speech sits near -8, silence at log(LOG_FLOOR) = -13.8),
  so a zero would insert a loud band, and the mean over the utterance's real
  frames stands in for it. Time masks are drawn inside each utterance's real
  length, so padding does not absorb them. Shapes are static, so this runs
  inside the jitted step.
  """
  batch, frames, mels = features.shape
  f_rng, t_rng = jax.random.split(rng)

  def masks(rng, count, width, limit, size):
    w_rng, s_rng = jax.random.split(rng)
    widths = jax.random.randint(w_rng, (batch, count), 0, width + 1)
    starts = (
      jax.random.uniform(s_rng, (batch, count)) * jnp.maximum(limit[:, None] - widths, 1)
    ).astype(jnp.int32)
    pos = jnp.arange(size)[None, None, :]
    hit = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])
    return hit.any(axis=1)

  freq = masks(f_rng, freq_masks, freq_width, jnp.full((batch,), mels), mels)
  time = masks(t_rng, time_masks, time_width, lengths, frames)
  keep = ~(freq[:, None, :] | time[:, :, None])
  real = (jnp.arange(frames)[None, :] < lengths[:, None])[..., None]
  mean = jnp.sum(features * real, axis=(1, 2)) / jnp.maximum(lengths * mels, 1)
  return jnp.where(keep, features, mean[:, None, None].astype(features.dtype))


def mel_centres_hz(sample_rate: int, num_mels: int) -> np.ndarray:
  """Centre frequency (Hz) of each band of `_mel_matrix` (strictly increasing)."""
  edges = librosa.mel_frequencies(n_mels=num_mels + 2, fmin=0.0, fmax=sample_rate / 2)
  return edges[1:-1].astype(np.float32)


def channel_augment(
  features: jax.Array,
  rng: jax.Array,
  features_config: ml_collections.ConfigDict,
  *,
  warp: float,
  eq_db: float,
  lowpass_prob: float,
  lowpass_hz: tuple[float, float],
) -> jax.Array:
  """Voice and channel variation on stored log-mel, per utterance, inside the jitted step.

  Why: a new speaker differs from the training voices mainly in vocal-tract
  length (formants shift together), microphone response and bandwidth, and
  real recordings such as the 8 kHz FSDD clips are empty above 4 kHz while
  espeak-ng renders the full band. Each utterance gets
  - `warp`: frequency axis scaled by a factor in [1 - warp, 1 + warp]
    (vocal-tract-length perturbation, Jaitly & Hinton 2013);
  - `eq_db`: a smooth random gain curve over frequency of up to +-eq_db dB
    (a different microphone);
  - `lowpass_prob`: with this probability, every band above a cutoff drawn
    from `lowpass_hz` set to the log floor (a band-limited recording).
  """
  batch, _, mels = features.shape
  centres = jnp.asarray(mel_centres_hz(features_config.sample_rate, mels), features.dtype)
  warp_rng, eq_rng, cut_rng, on_rng = jax.random.split(rng, 4)
  if warp:
    alpha = jax.random.uniform(warp_rng, (batch, 1), minval=1 - warp, maxval=1 + warp)
    # Band k takes its energy from the (fractional) band whose centre is f_k / alpha.
    source = jax.vmap(lambda a: jnp.interp(centres / a, centres, jnp.arange(mels, dtype=a.dtype)))(
      alpha[:, 0]
    )
    lo = jnp.clip(jnp.floor(source).astype(jnp.int32), 0, mels - 1)
    hi = jnp.clip(lo + 1, 0, mels - 1)
    frac = (source - lo)[:, None, :]

    def band(index):
      return jnp.take_along_axis(features, jnp.broadcast_to(index[:, None], features.shape), -1)

    features = band(lo) * (1 - frac) + band(hi) * frac
  if eq_db:
    # Natural-log power units: +-eq_db dB of gain, as a sum of three slow cosines.
    amplitude = eq_db * np.log(10) / 10 / 3
    coef = jax.random.uniform(eq_rng, (batch, 3), minval=-amplitude, maxval=amplitude)
    basis = jnp.cos(jnp.pi * jnp.arange(1, 4)[:, None] * jnp.linspace(0, 1, mels)[None, :])
    features = features + (coef @ basis)[:, None, :].astype(features.dtype)
  if lowpass_prob:
    cutoff = jax.random.uniform(cut_rng, (batch, 1), minval=lowpass_hz[0], maxval=lowpass_hz[1])
    on = jax.random.uniform(on_rng, (batch, 1)) < lowpass_prob
    silent = (centres[None, :] > cutoff) & on
    features = jnp.where(silent[:, None, :], np.log(LOG_FLOOR), features)
  return features
