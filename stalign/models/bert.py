"""BERT / MiniLM encoder and sentence-transformers pooling as Flax NNX modules.

The teacher has to match the published model number for number, so only what
the BERT / MiniLM family needs is here: a post-LN encoder with absolute
positions, the pooling modes of `sentence_transformers.models.Pooling` and the
optional `Normalize` module. This file builds modules and computes; it reads no
files (`stalign.models.hf_loader` fills the modules from a checkpoint).

The model is used pure-functionally: `encode` takes `(graphdef, state)` and
merges them inside the traced function, so callers pass plain state pytrees
through `jax.jit`. Every parameter carries logical axis names (`vocab`,
`embed`, `mlp`, `heads`, `kv`, `length`) that the project's rules table maps to
a device mesh.
"""

import dataclasses
import functools
from typing import Any
from typing import Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from stalign import sharding
from stalign.models import layers

# What `pool` implements, for loaders to refuse the rest up front.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
# sentence-transformers' own epsilons, kept so outputs agree to the last bit
# that float32 allows.
_MEAN_EPS = 1e-9
_NORM_EPS = 1e-12
_NORMAL = nnx.initializers.normal(0.02)  # BERT's initialiser, for modules built without weights.


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The subset of a HF `config.json` that shapes the encoder."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int
  type_vocab_size: int
  layer_norm_eps: float

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any]) -> "BertConfig":
    """Refuses settings this encoder would silently get wrong."""
    unsupported = {
      "hidden_act": ("gelu", hf.get("hidden_act", "gelu")),
      "position_embedding_type": ("absolute", hf.get("position_embedding_type", "absolute")),
    }
    for key, (want, got) in unsupported.items():
      if got != want:
        raise ValueError(
          f"config.json has {key}={got!r}; only {want!r} (BERT / MiniLM) is implemented"
        )
    if hf["hidden_size"] % hf["num_attention_heads"]:
      raise ValueError("config.json: hidden_size must divide evenly into num_attention_heads")
    return cls(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_positions=hf["max_position_embeddings"],
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
    )


@dataclasses.dataclass(frozen=True)
class Pooling:
  """How token states become one vector (hashable: it is a jit static)."""

  modes: tuple[str, ...]
  normalize: bool


def _init(names: tuple[str, ...], base: nnx.Initializer = _NORMAL):
  # Random init only matters for tests; real weights are always loaded. The
  # names are for the caller's rules table (`sharding.logical`: nothing is
  # placed eagerly, which would demand a mesh just to build the module).
  return sharding.logical(base, *names)


class Embeddings(nnx.Module):
  """Word + position + segment embeddings, then LayerNorm."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    embed = functools.partial(nnx.Embed, features=config.hidden_size, rngs=rngs)
    self.word = embed(config.vocab_size, embedding_init=_init(("vocab", "embed")))
    self.position = embed(config.max_positions, embedding_init=_init(("length", "embed")))
    self.token_type = embed(config.type_vocab_size, embedding_init=_init(("vocab", "embed")))
    self.norm = layers.norm(config.hidden_size, rngs, config.layer_norm_eps)

  def __call__(self, input_ids: jax.Array) -> jax.Array:
    # Sentences are single segments, so every token has segment 0.
    x = (
      self.word(input_ids)
      + self.position.embedding[: input_ids.shape[1]][None]
      + self.token_type.embedding[0]
    )
    return self.norm(x)


class SelfAttention(nnx.Module):
  """Multi-head attention with per-head kernels so heads can be sharded."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    heads = (config.num_heads, config.hidden_size // config.num_heads)
    project = functools.partial(
      nnx.LinearGeneral,
      config.hidden_size,
      heads,
      kernel_init=_init(("embed", "heads", "kv")),
      bias_init=_init(("heads", "kv"), nnx.initializers.zeros),
      rngs=rngs,
    )
    self.query, self.key, self.value = project(), project(), project()
    self.out = nnx.LinearGeneral(
      heads,
      config.hidden_size,
      axis=(-2, -1),
      kernel_init=_init(("heads", "kv", "embed")),
      bias_init=_init(("embed",), nnx.initializers.zeros),
      rngs=rngs,
    )

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    y = jax.nn.dot_product_attention(
      self.query(x), self.key(x), self.value(x), mask=mask[:, None, None, :]
    )
    return self.out(y)


class Layer(nnx.Module):
  """One post-LN transformer block, as in the original BERT."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.attention = SelfAttention(config, rngs=rngs)
    hidden, inner, eps = config.hidden_size, config.intermediate_size, config.layer_norm_eps
    self.attention_norm = layers.norm(hidden, rngs, eps)
    self.mlp_in = layers.dense(hidden, inner, ("embed", "mlp"), rngs, _NORMAL)
    self.mlp_out = layers.dense(inner, hidden, ("mlp", "embed"), rngs, _NORMAL)
    self.mlp_norm = layers.norm(hidden, rngs, eps)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = self.attention_norm(x + self.attention(x, mask))
    # HF's hidden_act "gelu" is the exact erf form, not the tanh estimate.
    h = jax.nn.gelu(self.mlp_in(x), approximate=False)
    return self.mlp_norm(x + self.mlp_out(h))


class BertEncoder(nnx.Module):
  """Token ids -> contextual token states (B, T, hidden)."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.embeddings = Embeddings(config, rngs=rngs)
    self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_layers)])

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    mask = attention_mask.astype(bool)
    x = self.embeddings(input_ids)
    for layer in self.layers:
      x = layer(x, mask)
    return x


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: Pooling) -> jax.Array:
  """sentence-transformers' Pooling (+ Normalize): padding never counts."""
  mask = attention_mask[..., None].astype(hidden.dtype)
  count = jnp.maximum(jnp.sum(mask, axis=1), _MEAN_EPS)
  total = jnp.sum(hidden * mask, axis=1)
  parts = {
    "cls": lambda: hidden[:, 0],
    "max": lambda: jnp.max(jnp.where(mask > 0, hidden, -jnp.inf), axis=1),
    "mean": lambda: total / count,
    "mean_sqrt_len_tokens": lambda: total / jnp.sqrt(count),
  }
  out = jnp.concatenate([parts[mode]() for mode in pooling.modes], axis=-1)
  if pooling.normalize:
    norm = jnp.linalg.norm(out, axis=-1, keepdims=True)
    out = out / jnp.maximum(norm, _NORM_EPS)
  return out


def encode(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  input_ids: jax.Array,
  attention_mask: jax.Array,
  *,
  pooling: Pooling,
) -> jax.Array:
  """Sentence embeddings as a pure function of the state, for jit and sharding.

  Args:
    graphdef: from `hf_loader.load_bert` (static under jit).
    state: the parameter pytree; shard it with `nnx.get_partition_spec`.
    input_ids: int32 (B, T), right-padded.
    attention_mask: (B, T), 1 on real tokens.
    pooling: from `hf_loader.load_pooling`.

  Returns:
    float32 (B, dim) embeddings.
  """
  model = nnx.merge(graphdef, state)
  return pool(model(input_ids, attention_mask), attention_mask, pooling)
