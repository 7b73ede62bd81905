"""Whisper's audio encoder in Flax NNX, with Whisper's own front end.

Radford et al. (2022): 80 log-mel bins (25 ms windows every 10 ms, librosa's
Slaney filters, log10 clamped at 1e-10, floored 8 below the clip's maximum,
then (x + 4) / 4), two convolutions (the second with stride 2: 50 frames per
second), sinusoidal positions, pre-norm Transformer blocks, a final LayerNorm.

Whisper was trained on 30 s windows; here any length up to 30 s runs without
padding to 30 s (the position table is sliced), and padded frames of a batch
are masked out of attention, so a clip's frames do not depend on what it was
batched with. `stalign.models.whisper_weights` reads pretrained weights into
this module's layout (`load_pretrained`).

Parameters carry logical axis names (`embed`, `mlp`, `heads`) so the mesh
rules of a config shard it like the Conformer.
"""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import librosa
import numpy as np

from stalign.models import layers as layers_lib
from stalign.models import whisper_weights
from stalign.sharding import constrain
from stalign.sharding import logical

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms.
HOP = 160  # 10 ms.
FRAMES_PER_SECOND = SAMPLE_RATE // HOP // 2  # Encoder frames: the second conv has stride 2.
LAYER_NORM_EPS = 1e-5


@functools.lru_cache(maxsize=2)
def _mel_filters(num_mels: int) -> np.ndarray:
  return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=num_mels).astype(np.float32)


def mel_frames(samples: int) -> int:
  """`log_mel`'s frame count for a clip of `samples` samples: one per 10 ms, at least one."""
  return max(samples, N_FFT // 2 + 1) // HOP


def log_mel(wave: np.ndarray, num_mels: int = 80) -> np.ndarray:
  """Whisper's log-mel [`mel_frames(len(wave))`, mels] of a 16 kHz waveform.

  As `whisper.audio.log_mel_spectrogram` with no padding: centred frames with
  reflect padding, periodic Hann window, the last STFT frame dropped, power
  spectrum, Slaney mel filters, then Whisper's log10 clamp and scaling. The
  floor (the clip's maximum minus 8) is taken over this clip alone.
  """
  wave = np.asarray(wave, np.float32)
  if wave.size < N_FFT // 2 + 1:  # Reflect padding needs more samples than half a window.
    wave = np.pad(wave, (0, N_FFT // 2 + 1 - wave.size))
  padded = np.pad(wave, N_FFT // 2, mode="reflect")
  frames = 1 + (padded.size - N_FFT) // HOP
  index = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
  window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
  spectrum = np.abs(np.fft.rfft(padded[index] * window, axis=-1)[:-1]) ** 2
  mel = spectrum.astype(np.float32) @ _mel_filters(num_mels).T
  log_spec = np.log10(np.maximum(mel, 1e-10))
  log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
  return ((log_spec + 4.0) / 4.0).astype(np.float32)


def encoder_frames(mel_frames: jax.Array) -> jax.Array:
  """Encoder frames of `mel_frames` log-mel frames (the stride-2 convolution's output length)."""
  return (mel_frames + 1) // 2


_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()


class Attention(nnx.Module):
  """Whisper's multi-head self-attention (the key projection's bias is zero in every checkpoint)."""

  def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
    self.heads = heads
    self.query = layers_lib.dense(width, width, ("embed", "heads"), rngs)
    self.key = layers_lib.dense(width, width, ("embed", "heads"), rngs)
    self.value = layers_lib.dense(width, width, ("embed", "heads"), rngs)
    self.out = layers_lib.dense(width, width, ("heads", "embed"), rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    split = lambda t: t.reshape(batch, length, self.heads, width // self.heads)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    bias = jnp.where(mask[:, None, None, :], 0.0, -1e9).astype(q.dtype)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias)
    return self.out(out.reshape(batch, length, width))


class Block(nnx.Module):
  """Pre-norm residual attention and a 4x GELU MLP."""

  def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
    self.attn_norm = layers_lib.norm(width, rngs, LAYER_NORM_EPS)
    self.attn = Attention(width, heads, rngs)
    self.mlp_norm = layers_lib.norm(width, rngs, LAYER_NORM_EPS)
    self.fc1 = layers_lib.dense(width, 4 * width, ("embed", "mlp"), rngs)
    self.fc2 = layers_lib.dense(4 * width, width, ("mlp", "embed"), rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.attn_norm(x), mask)
    x = x + self.fc2(jax.nn.gelu(self.fc1(self.mlp_norm(x)), approximate=False))
    return constrain(x, "batch", "length", None)


class Stem(nnx.Module):
  """Two convolutions over log-mel frames (the second halves the frame rate), plus positions."""

  def __init__(self, dims: whisper_weights.Dims, rngs: nnx.Rngs):
    conv = functools.partial(
      nnx.Conv,
      kernel_size=(3,),
      padding=((1, 1),),
      kernel_init=logical(_init, None, None, "embed"),
      bias_init=logical(_zeros, "embed"),
      rngs=rngs,
    )
    self.conv1 = conv(dims.num_mels, dims.width)
    self.conv2 = conv(dims.width, dims.width, strides=(2,))
    # Whisper's sinusoids, fixed in every checkpoint: a constant, never trained.
    self.positions = nnx.Variable(jnp.zeros((dims.max_frames, dims.width), jnp.float32))

  def __call__(self, mel: jax.Array, mel_frames: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(hidden [batch, encoder frames, width], mask) of log-mel [batch, frames, mels]."""
    length = mel.shape[1]
    if encoder_frames(length) > self.positions.shape[0]:
      limit = 2 * self.positions.shape[0]
      raise ValueError(
        f"Whisper encodes at most {limit} log-mel frames ({limit // 100} s); got {length}: "
        "cut the audio into shorter clips"
      )
    real = (jnp.arange(length)[None, :] < mel_frames[:, None])[..., None]
    # Frames past a clip's end are zeroed before each convolution, as its own zero padding.
    x = jax.nn.gelu(self.conv1(mel * real), approximate=False) * real
    x = jax.nn.gelu(self.conv2(x), approximate=False)
    mask = jnp.arange(x.shape[1])[None, :] < encoder_frames(mel_frames)[:, None]
    x = (x + self.positions[: x.shape[1]]) * mask[..., None]
    return constrain(x, "batch", "length", None), mask


class Encoder(nnx.Module):
  """Whisper's encoder, or its first `layers` blocks (`final_norm` only when all are kept)."""

  def __init__(self, dims: whisper_weights.Dims, layers: int, rngs: nnx.Rngs):
    self.stem = Stem(dims, rngs)
    self.blocks = nnx.List([Block(dims.width, dims.heads, rngs) for _ in range(layers)])
    self.final_norm = (
      layers_lib.norm(dims.width, rngs, LAYER_NORM_EPS) if layers == dims.layers else None
    )

  def __call__(self, mel: jax.Array, mel_frames: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, mask = self.stem(mel, mel_frames)
    for block in self.blocks:
      x = block(x, mask)
    if self.final_norm is not None:
      x = self.final_norm(x)
    return x * mask[..., None], mask


class Blocks(nnx.Module):
  """Whisper blocks `first`.. `first + count - 1` on an earlier block's output (tuned part).

  `remat` (`model.remat`) recomputes each block's activations in the backward
  pass instead of keeping them, as the Conformer's blocks do: a tuned block then
  holds only its input ([batch, frames, width]) between the passes, not its
  attention scores ([batch, heads, frames, frames]) and 4x-wide MLP. The blocks
  are unrolled, not scanned.
  """

  def __init__(
    self, dims: whisper_weights.Dims, first: int, count: int, rngs: nnx.Rngs, remat: bool = False
  ):
    self.first = first
    self.remat = remat
    self.blocks = nnx.List([Block(dims.width, dims.heads, rngs) for _ in range(count)])
    self.final_norm = (
      layers_lib.norm(dims.width, rngs, LAYER_NORM_EPS) if first + count == dims.layers else None
    )

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    block_fn = lambda block, h, m: block(h, m)
    if self.remat:
      block_fn = nnx.remat(block_fn)
    for block in self.blocks:
      x = block_fn(block, x, mask)
    if self.final_norm is not None:
      x = self.final_norm(x)
    return x * mask[..., None]


def load_pretrained(module: nnx.Module, flat: dict[str, np.ndarray], first_block: int = 0) -> int:
  """Copies pretrained `flat` params (`whisper_weights.load`) into `module`; returns how many.

  `module` is an `Encoder` or `Blocks`; its block i takes pretrained block
  `first_block + i`. Every parameter of `module` must be found, with its shape.
  """
  state = nnx.state(module)
  copied = 0

  def fill(path, value):
    nonlocal copied
    # Module attributes and list indices; a trailing `.value` is the Variable's own field.
    keys = [str(k.key if hasattr(k, "key") else k.idx) for k in path if not hasattr(k, "name")]
    if keys[0] == "blocks":
      keys[1] = str(int(keys[1]) + first_block)
    name = "/".join(keys)
    name = name.removeprefix("stem/")
    if name not in flat:
      raise whisper_weights.WeightsError(f"pretrained Whisper weights have no {name}")
    new = flat[name]
    if new.shape != value.shape:
      raise whisper_weights.WeightsError(
        f"pretrained {name} has shape {new.shape}, the module expects {value.shape}"
      )
    copied += new.size
    return jnp.asarray(new, value.dtype)

  nnx.update(module, jax.tree_util.tree_map_with_path(fill, state))
  return copied


def pretrained_encoder(weights: str, layers: int | None = None) -> Encoder:
  """The first `layers` blocks (all when None) of Whisper `weights`, loaded."""
  flat, dims = whisper_weights.load(weights)
  layers = dims.layers if layers is None else layers
  if not 0 <= layers <= dims.layers:
    raise whisper_weights.WeightsError(
      f"Whisper {weights} has {dims.layers} encoder layers; {layers} were asked for"
    )
  encoder = Encoder(dims, layers, nnx.Rngs(0))
  load_pretrained(encoder, flat)
  return encoder
