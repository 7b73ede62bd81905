"""The student: a Conformer speech encoder with a CTC head and an utterance head.

Its input is what `stalign.models.frontend` stores: log-mel frames (the
from-scratch Conformer), or the frames of a frozen pretrained Whisper encoder,
in which case the Conformer is a small head on a large pretrained body, and
`model.whisper_tuned_layers` more Whisper blocks can be fine-tuned in front of it.

Log-mel frames are stacked `subsample` at a time (8 x 10 ms = 80 ms per encoder
frame by default) and projected to the model width; calibration on a CPU
budget showed that fewer, wider frames are what lets a small encoder learn in
minutes (docs/experiments.md). A stack of Conformer blocks
(Gulati et al., 2020) follows; a character CTC head reads one of the blocks,
and the utterance head pools the frames and projects to the teacher's width.

Every parameter carries logical axis names and activations are constrained at
block boundaries, so `stalign.sharding` can lay the model out on any mesh.
Padding never changes an embedding: padded frames are masked out of attention,
zeroed before every convolution and excluded from pooling.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from stalign import utils
from stalign.data import text as text_lib
from stalign.models import bert
from stalign.models import frontend
from stalign.models import hf_loader
from stalign.models import layers
from stalign.models import whisper
from stalign.models import whisper_weights
from stalign.sharding import constrain
from stalign.sharding import logical

_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()


class FeedForward(nnx.Module):
  def __init__(self, dim: int, mult: int, dropout: float, rngs: nnx.Rngs):
    self.norm = layers.norm(dim, rngs)
    self.up = layers.dense(dim, mult * dim, ("embed", "mlp"), rngs)
    self.down = layers.dense(mult * dim, dim, ("mlp", "embed"), rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, rngs):
    hidden = self.dropout(nnx.silu(self.up(self.norm(x))), rngs=rngs)
    return self.dropout(self.down(hidden), rngs=rngs)


class SelfAttention(nnx.Module):
  def __init__(self, dim: int, heads: int, dropout: float, rngs: nnx.Rngs):
    self.norm = layers.norm(dim, rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=heads,
      in_features=dim,
      decode=False,
      dropout_rate=dropout,
      keep_rngs=False,
      deterministic=False,
      kernel_init=logical(_init, "embed", "heads", "kv"),
      out_kernel_init=logical(_init, "heads", "kv", "embed"),
      bias_init=logical(_zeros, "heads", "kv"),
      out_bias_init=logical(_zeros, "embed"),
      rngs=rngs,
    )
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, mask, rngs):
    attn_mask = nnx.make_attention_mask(mask, mask)
    return self.dropout(self.attn(self.norm(x), mask=attn_mask, rngs=rngs), rngs=rngs)


class DepthwiseConv(nnx.Module):
  """Per-channel 1-D convolution ("same" padding) as a sum of shifted, scaled copies.

  Equivalent to `nnx.Conv(..., feature_group_count=dim)`, but XLA's CPU backend
  runs grouped convolutions (and their gradients) about 5x slower than these
  few fused multiply-adds, and CPUs are where the demo trains.
  """

  def __init__(self, dim: int, kernel: int, rngs: nnx.Rngs):
    self.kernel = nnx.Param(
      logical(nnx.initializers.lecun_normal(in_axis=0, out_axis=1), None, "embed")(
        rngs.params(), (kernel, dim)
      )
    )
    self.bias = nnx.Param(logical(_zeros, "embed")(rngs.params(), (dim,)))

  def __call__(self, x):
    k = self.kernel.shape[0]
    length = x.shape[1]
    padded = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), (0, 0)))  # As XLA "SAME".
    return sum(padded[:, i : i + length] * self.kernel[i] for i in range(k)) + self.bias[...]


class ConvModule(nnx.Module):
  """Pointwise GLU, depthwise conv, LayerNorm (not BatchNorm: padding-safe), swish, pointwise."""

  def __init__(self, dim: int, kernel: int, dropout: float, rngs: nnx.Rngs):
    self.norm = layers.norm(dim, rngs)
    self.glu = layers.dense(dim, 2 * dim, ("embed", "mlp"), rngs)
    self.depthwise = DepthwiseConv(dim, kernel, rngs)
    self.conv_norm = layers.norm(dim, rngs)
    self.out = layers.dense(dim, dim, ("mlp", "embed"), rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, mask, rngs):
    x = nnx.glu(self.glu(self.norm(x)), axis=-1) * mask[..., None]
    x = nnx.silu(self.conv_norm(self.depthwise(x)))
    return self.dropout(self.out(x), rngs=rngs)


class ConformerBlock(nnx.Module):
  def __init__(
    self, dim: int, heads: int, kernel: int, ff_mult: int, dropout: float, rngs: nnx.Rngs
  ):
    self.ff1 = FeedForward(dim, ff_mult, dropout, rngs)
    self.attn = SelfAttention(dim, heads, dropout, rngs)
    self.conv = ConvModule(dim, kernel, dropout, rngs)
    self.ff2 = FeedForward(dim, ff_mult, dropout, rngs)
    self.norm = layers.norm(dim, rngs)

  def __call__(self, x, mask, rngs):
    x = x + 0.5 * self.ff1(x, rngs)
    x = x + self.attn(x, mask, rngs)
    x = x + self.conv(x, mask, rngs)
    x = x + 0.5 * self.ff2(x, rngs)
    return constrain(self.norm(x) * mask[..., None], "batch", "length", None)


def _sinusoids(length: int, dim: int) -> jax.Array:
  pos = jnp.arange(length)[:, None]
  freqs = jnp.exp(-jnp.log(10_000.0) * jnp.arange(0, dim, 2) / dim)
  return jnp.concatenate([jnp.sin(pos * freqs), jnp.cos(pos * freqs)], axis=-1)[:, :dim]


def _whisper_blocks(
  pretrained: tuple[str, int], count: int, rngs: nnx.Rngs, remat: bool = False
) -> whisper.Blocks:
  """`count` Whisper blocks from block `pretrained[1]` of weights `pretrained[0]`, loaded."""
  flat, dims = whisper_weights.load(pretrained[0])
  blocks = whisper.Blocks(dims, pretrained[1], count, rngs, remat)
  whisper.load_pretrained(blocks, flat, first_block=pretrained[1])
  return blocks


class TeacherTop(nnx.Module):
  """The teacher's last transformer layers over the student's frames, warm-started from the teacher.

  The teacher already knows how words compose into a sentence vector; with its
  upper layers on top, the student has only to say which words it hears, in the
  teacher's own hidden space, rather than learn that composition from a few
  thousand transcripts. The frames enter through a fresh projection plus the
  teacher's position table and embedding LayerNorm; the output is pooled as the
  teacher pools (without its final normalisation: the losses normalise).
  """

  def __init__(self, dim: int, teacher_path: str, count: int, rngs: nnx.Rngs):
    transformer_dir, pooling = hf_loader.load_pooling(
      teacher_path or hf_loader.default_teacher_path()
    )
    graphdef, state, bert_config = hf_loader.load_bert(transformer_dir)
    teacher = nnx.merge(graphdef, state)
    if not 0 < count <= len(teacher.layers):
      raise ValueError(
        f"model.teacher_layers={count}: the teacher has {len(teacher.layers)} layers to take"
      )
    self.project = layers.dense(dim, bert_config.hidden_size, (None, "embed"), rngs)
    self.position = teacher.embeddings.position
    self.norm = teacher.embeddings.norm
    self.layers = nnx.List(teacher.layers[-count:])
    self.pooling = bert.Pooling(pooling.modes, normalize=False)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    positions = self.position.embedding.shape[0]
    if x.shape[1] > positions:
      raise ValueError(
        f"{x.shape[1]} student frames exceed the teacher's {positions} positions: lower "
        "features.max_seconds or raise model.subsample"
      )
    h = self.norm(self.project(x) + self.position.embedding[: x.shape[1]][None])
    for layer in self.layers:
      h = layer(h, mask)
    return bert.pool(h, mask, self.pooling)


class Student(nnx.Module):
  """Speech encoder; `__call__` returns utterance embeddings, CTC logits and their masks."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    num_mels: int,
    embed_dim: int,
    vocab_size: int,
    temperature: float,
    rngs: nnx.Rngs,
    pretrained: tuple[str, int] | None = None,
    teacher_path: str = "",
  ):
    """`pretrained` = (Whisper weights, first block): `config.whisper_tuned_layers` Whisper blocks
    from that one on run first, warm-started from the weights (regime b's ASR pretraining).
    `teacher_path` is the teacher whose last `config.teacher_layers` layers make the utterance
    head (`TeacherTop`) when that is set."""
    dim = config.dim
    self.whisper = (
      None
      if not config.whisper_tuned_layers
      else _whisper_blocks(pretrained, config.whisper_tuned_layers, rngs, config.remat)
    )
    self.subsample = config.subsample
    self.scan_blocks = config.scan_blocks
    self.remat = config.remat
    self.ctc_layer = config.ctc_layer % config.depth
    self.input_norm = nnx.LayerNorm(num_mels * config.subsample, rngs=rngs)
    self.frontend = layers.dense(num_mels * config.subsample, dim, (None, "embed"), rngs)
    self.blocks = nnx.List(
      [
        ConformerBlock(dim, config.heads, config.conv_kernel, config.ff_mult, config.dropout, rngs)
        for _ in range(config.depth)
      ]
    )
    # CTC reads `ctc_upsample` outputs per encoder frame: characters come faster than 80 ms.
    self.ctc_upsample = config.ctc_upsample
    self.vocab_size = vocab_size
    self.ctc_head = layers.dense(dim, config.ctc_upsample * vocab_size, ("embed", "vocab"), rngs)
    if config.teacher_layers:
      self.teacher_top = TeacherTop(dim, teacher_path, config.teacher_layers, rngs)
    else:
      self.teacher_top = None
      # Attentive pooling learns which frames matter; mean pooling weighs all real frames alike.
      self.pool_score = (
        layers.dense(dim, 1, ("embed", None), rngs) if config.pooling == "attention" else None
      )
      self.pool_hidden = layers.dense(dim, dim, ("embed", "mlp"), rngs)
      self.pool_out = layers.dense(dim, embed_dim, ("mlp", None), rngs)
    self.dropout = nnx.Dropout(config.dropout)
    # The contrastive loss's temperature is learned with the model (as CLIP's logit scale).
    self.log_temperature = nnx.Param(jnp.log(jnp.float32(temperature)))

  def frame_mask(self, num_frames: jax.Array, padded_frames: int) -> jax.Array:
    """[batch, encoder frames] True where a stacked frame holds any real audio."""
    frames = utils.ceil_div(num_frames, self.subsample)
    return jnp.arange(padded_frames // self.subsample)[None, :] < frames[:, None]

  def _run_blocks(self, x: jax.Array, mask: jax.Array, rngs: nnx.Rngs | None) -> list[jax.Array]:
    """The output of every Conformer block, first to last.

    Unrolled by default. `model.scan_blocks` runs one compiled block body over
    the stacked block parameters (`jax.lax.scan`): compile time stops growing
    with depth, and the parameters keep their per-block layout, so checkpoints
    and shardings are the same either way (dropout then draws one key per block,
    so its masks differ from the unrolled run's). `model.remat` recomputes each
    block's activations in the backward pass instead of keeping them: memory
    per block drops to its input, for about a third more compute.
    """
    if not self.scan_blocks:
      block_fn = lambda block, h, r: block(h, mask, r)
      if self.remat:
        block_fn = nnx.remat(block_fn)
      out = []
      for block in self.blocks:
        out.append(x := block_fn(block, x, rngs))
      return out

    graphdef = nnx.graphdef(self.blocks[0])
    stacked = jax.tree.map(lambda *s: jnp.stack(s), *(nnx.state(b) for b in self.blocks))
    keys = None if rngs is None else jax.random.split(rngs.dropout(), len(self.blocks))

    def body(h, state_and_key):
      state, key = state_and_key
      block = nnx.merge(graphdef, state)
      h = block(h, mask, None if key is None else nnx.Rngs(dropout=key))
      return h, h

    _, outs = jax.lax.scan(jax.checkpoint(body) if self.remat else body, x, (stacked, keys))
    return list(outs)

  def __call__(
    self, features: jax.Array, num_frames: jax.Array, rngs: nnx.Rngs | None = None
  ) -> dict:
    """Dropout draws from `rngs` (needed in train mode only), so the params are the whole state."""
    batch, length, mels = features.shape
    mask = self.frame_mask(num_frames, length)
    real = jnp.arange(length)[None, :] < num_frames[:, None]
    if self.whisper is not None:
      features = self.whisper(features, real)
    x = (features * real[..., None]).reshape(batch, length // self.subsample, mels * self.subsample)
    x = self.frontend(self.input_norm(x)) + _sinusoids(x.shape[1], self.frontend.out_features)
    x = constrain(self.dropout(x, rngs=rngs) * mask[..., None], "batch", "length", None)
    hidden = [x, *self._run_blocks(x, mask, rngs)]
    x = hidden[-1]
    ctc_hidden = hidden[self.ctc_layer + 1]
    mean_weights = mask / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
    if self.teacher_top is not None:
      embedding = self.teacher_top(x, mask)
    else:
      if self.pool_score is None:
        weights = mean_weights
      else:
        scores = jnp.where(mask, self.pool_score(x)[..., 0], -1e9)
        weights = jax.nn.softmax(scores, axis=1) * mask
      self.sow(nnx.Intermediate, "pool_weights", weights)
      pooled = jnp.einsum("bt,btd->bd", weights, x)
      embedding = self.pool_out(nnx.gelu(self.pool_hidden(pooled)))
    ctc_logits = self.ctc_head(ctc_hidden).reshape(batch, -1, self.vocab_size)
    # Mean-pooled front end and block outputs, for layer-wise probes (jit prunes unused ones).
    layers = jnp.stack([jnp.einsum("bt,btd->bd", mean_weights, h) for h in hidden])
    return {
      "embedding": embedding,
      "ctc_logits": ctc_logits,
      "layers": layers,
      "ctc_mask": jnp.repeat(mask, self.ctc_upsample, axis=1),
    }


def build(config: ml_collections.ConfigDict, embed_dim: int, seed: int = 0) -> Student:
  """The student `config` describes, for a teacher of width `embed_dim`.

  The one builder that training, evaluation and inference share, so a
  checkpoint always meets the module structure it was saved from.
  """
  return Student(
    config.model,
    frontend.feature_dim(config.features),
    embed_dim,
    text_lib.vocab_size(config.features.ctc_targets),
    config.loss.temperature,
    nnx.Rngs(seed),
    pretrained=(config.features.whisper_weights, config.features.whisper_layers)
    if config.model.whisper_tuned_layers
    else None,
    teacher_path=config.teacher.path,
  )
