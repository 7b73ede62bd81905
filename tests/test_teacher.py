"""Tests for stalign.models.teacher, .bert and .hf_loader.

Two kinds of evidence: parity with sentence-transformers on the real
all-MiniLM-L6-v2 (fixture made by tests/fixtures/make_teacher_reference.py),
and a tiny random BERT saved in HF format whose embeddings are recomputed here
with a plain float64 numpy forward, independent of Flax.
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest
import safetensors.numpy
from scipy import special
import tokenizers

from stalign.models import bert
from stalign.models import hf_loader
from stalign.models import teacher as teacher_lib

_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "teacher_reference.npz")
_TINY = dict(
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
  max_position_embeddings=64,
)
_WORDS = (
  "turn on off the lights kitchen lamp set thermostat to degrees play "
  "music please open door close a is what time it in room"
).split()
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SENTENCES = (
  "turn on the lights",
  "Set the THERMOSTAT to 21 degrees, please!",
  "what time is it",
  "a",
  "play music in the kitchen and close the door and turn off the lamp in "
  "the room please",  # > 16 tokens: another length bucket.
  "open the door",
  "xyzzy quux",  # Spelled out letter by letter via ## pieces.
  "",
)


def _tiny_vocab() -> list[str]:
  letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
  digits = [str(d) for d in range(10)]
  return (
    list(_SPECIALS)
    + _WORDS
    + letters
    + digits
    + list(".,!?")
    + ["##" + ch for ch in letters + digits]
  )


def _write_tokenizer(path: str, vocab: list[str]) -> None:
  tok = tokenizers.Tokenizer(
    tokenizers.models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]")
  )
  tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
    single="[CLS] $A [SEP]",
    special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
  )
  # Like the packaged MiniLM tokenizer.json: fixed padding the loader must undo.
  tok.enable_padding(length=128)
  tok.enable_truncation(max_length=128)
  tok.save(path)


def _random_hf_tensors(
  rng: np.random.Generator, vocab_size: int, prefix: str
) -> dict[str, np.ndarray]:
  """A HF BertModel state dict: PyTorch (out, in) layout, HF names."""
  d, f = _TINY["hidden_size"], _TINY["intermediate_size"]
  shapes = {
    "embeddings.word_embeddings.weight": (vocab_size, d),
    "embeddings.position_embeddings.weight": (_TINY["max_position_embeddings"], d),
    "embeddings.token_type_embeddings.weight": (2, d),
    "embeddings.LayerNorm.weight": (d,),
    "embeddings.LayerNorm.bias": (d,),
    "pooler.dense.weight": (d, d),  # Unused by sentence embeddings.
    "pooler.dense.bias": (d,),
  }
  for i in range(_TINY["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name in (
      "attention.self.query",
      "attention.self.key",
      "attention.self.value",
      "attention.output.dense",
    ):
      shapes[p + name + ".weight"] = (d, d)
      shapes[p + name + ".bias"] = (d,)
    shapes.update(
      {
        p + "intermediate.dense.weight": (f, d),
        p + "intermediate.dense.bias": (f,),
        p + "output.dense.weight": (d, f),
        p + "output.dense.bias": (d,),
      }
    )
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      shapes[p + name + ".weight"] = (d,)
      shapes[p + name + ".bias"] = (d,)
  tensors = {}
  for name, shape in shapes.items():
    scale = 0.5 if len(shape) == 2 else 0.1
    value = rng.normal(0.0, scale, shape).astype(np.float32)
    if "LayerNorm.weight" in name:
      value += 1.0
    tensors[prefix + name] = value
  tensors[prefix + "embeddings.position_ids"] = np.arange(
    _TINY["max_position_embeddings"], dtype=np.int64
  )[None]
  return tensors


def _write_tiny_model(
  root: str, prefix: str = "", pooling: dict | None = None
) -> dict[str, np.ndarray]:
  vocab = _tiny_vocab()
  tensors = _random_hf_tensors(np.random.default_rng(0), len(vocab), prefix)
  os.makedirs(os.path.join(root, "1_Pooling"), exist_ok=True)
  config = dict(
    _TINY,
    architectures=["BertModel"],
    model_type="bert",
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    type_vocab_size=2,
    vocab_size=len(vocab),
    position_embedding_type="absolute",
  )
  with open(os.path.join(root, "config.json"), "w") as f:
    json.dump(config, f)
  safetensors.numpy.save_file(tensors, os.path.join(root, "model.safetensors"))
  _write_tokenizer(os.path.join(root, "tokenizer.json"), vocab)
  modules = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {
      "idx": 2,
      "name": "2",
      "path": "2_Normalize",
      "type": "sentence_transformers.models.Normalize",
    },
  ]
  with open(os.path.join(root, "modules.json"), "w") as f:
    json.dump(modules, f)
  with open(os.path.join(root, "1_Pooling", "config.json"), "w") as f:
    json.dump(pooling or {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, f)
  return tensors


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("tiny_bert"))
  _write_tiny_model(root)
  return root


@pytest.fixture(scope="module")
def tiny_teacher(tiny_dir) -> teacher_lib.Teacher:
  return teacher_lib.load(tiny_dir, max_tokens=32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-12) * w + b


def _reference_embedding(tensors: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
  """Plain float64 BERT + mean pooling + L2 norm on one unpadded sentence."""
  t = {k.removeprefix("bert."): v.astype(np.float64) for k, v in tensors.items()}
  n, d = _TINY["num_attention_heads"], _TINY["hidden_size"]
  hd = d // n

  def linear(x, name):
    return x @ t[name + ".weight"].T + t[name + ".bias"]

  def norm(x, name):
    return _layer_norm(x, t[name + ".weight"], t[name + ".bias"])

  x = (
    t["embeddings.word_embeddings.weight"][ids]
    + t["embeddings.position_embeddings.weight"][: len(ids)]
    + t["embeddings.token_type_embeddings.weight"][0]
  )
  x = norm(x, "embeddings.LayerNorm")
  for i in range(_TINY["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    q, k, v = (
      linear(x, p + "attention.self." + m).reshape(-1, n, hd).transpose(1, 0, 2)
      for m in ("query", "key", "value")
    )
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(1, 0, 2).reshape(-1, d)
    x = norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    h = linear(x, p + "intermediate.dense")
    h = 0.5 * h * (1.0 + special.erf(h / math.sqrt(2.0)))
    x = norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
  pooled = x.mean(0)
  return pooled / np.linalg.norm(pooled)


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_tiny_model_matches_numpy_reference(tmp_path, prefix):
  tensors = _write_tiny_model(str(tmp_path), prefix=prefix)
  max_tokens = 16
  teacher = teacher_lib.load(str(tmp_path), max_tokens=max_tokens)
  got = teacher.embed(_SENTENCES, batch_size=4)

  vocab = _tiny_vocab()
  plain = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  plain.no_padding()
  plain.no_truncation()
  want = []
  for text in _SENTENCES:
    pieces = plain.encode(text, add_special_tokens=False).ids
    ids = [vocab.index("[CLS]")] + pieces[: max_tokens - 2] + [vocab.index("[SEP]")]
    want.append(_reference_embedding(tensors, ids))
  assert max(len(plain.encode(s).ids) for s in _SENTENCES) > max_tokens
  assert got.shape == (len(_SENTENCES), _TINY["hidden_size"])
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, np.stack(want), atol=1e-5)


def test_bucketing_and_order_do_not_change_embeddings(tiny_teacher):
  batched = tiny_teacher.embed(_SENTENCES, batch_size=3)
  alone = np.concatenate([tiny_teacher.embed([s], batch_size=1) for s in _SENTENCES])
  reverse = tiny_teacher.embed(_SENTENCES[::-1], batch_size=256)[::-1]
  np.testing.assert_allclose(batched, alone, atol=1e-5)
  np.testing.assert_allclose(reverse, alone, atol=1e-5)
  # Distinct rows, so a permutation could not pass the checks above.
  gram = alone @ alone.T
  assert np.all(gram[~np.eye(len(alone), dtype=bool)] < 0.999)


def test_embed_empty_list(tiny_teacher):
  assert tiny_teacher.embed([]).shape == (0, tiny_teacher.dim)


def test_padded_shapes_are_bounded():
  lengths = {teacher_lib.round_length(n, 128) for n in range(1, 129)}
  assert lengths == {4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128}
  assert teacher_lib.round_length(130, 128) == 128
  for n in range(1, 257):  # Never short, and past 32 tokens < 25% padding.
    padded = teacher_lib.round_length(n, 256)
    assert n <= padded <= max(32, 1.25 * n), (n, padded)
  assert [teacher_lib.round_rows(n, 256) for n in (1, 3, 200, 256)] == [1, 4, 256, 256]
  assert teacher_lib.round_rows(3, 256, multiple=8) == 8
  assert teacher_lib.round_rows(100, 96, multiple=8) == 96


def test_every_parameter_has_logical_axis_names(tiny_teacher):
  allowed = {"vocab", "embed", "mlp", "heads", "kv", "length"}
  flat = nnx.to_flat_state(tiny_teacher.state)
  assert len(flat) == 5 + 16 * _TINY["num_hidden_layers"]
  for path, var in flat:
    names = var.get_metadata().get("out_sharding")
    assert names and len(names) == var.value.ndim, path
    assert set(names) <= allowed, (path, names)


_SHARDED = """
import json, sys
import jax, numpy as np
from stalign.models import teacher as teacher_lib
sentences, tiny_dir = json.loads(sys.argv[1]), sys.argv[2]
mesh = jax.make_mesh((4,), ("data",))
sharded = teacher_lib.load(tiny_dir, max_tokens=32, mesh=mesh)
calls, apply = [], sharded.apply
def recording(state, ids, mask):
  out = apply(state, ids, mask)
  calls.append([len(ids.sharding.device_set), ids.addressable_shards[0].data.shape[0],
                ids.shape[0], len(out.sharding.device_set)])
  return out
sharded.apply = recording
alone = teacher_lib.load(tiny_dir, max_tokens=32)
gap = max(float(np.abs(sharded.embed(sentences, batch_size=b) - alone.embed(sentences)).max())
          for b in (3, 256))
print(json.dumps({"gap": gap, "calls": calls}))
"""


def test_encode_shards_the_batch_over_a_mesh(tiny_dir):
  """Four host devices in a fresh process (pytest's has one, where nothing would be split)."""
  out = subprocess.run(
    [sys.executable, "-c", _SHARDED, json.dumps(_SENTENCES), tiny_dir],
    env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.splitlines()[-1])
  assert result["gap"] < 1e-5
  # batch_size=3 over 8 sentences: 3, 3, 2 rows, each padded to 4 (one per device); then all
  # 8 at once, 2 per device. Inputs and outputs live on all four devices.
  assert result["calls"] == [[4, 1, 4, 4]] * 3 + [[4, 2, 8, 4]]


def test_encode_is_pure(tiny_teacher):
  """The jitted function takes the state as an argument, not a closure: new weights give new
  outputs without rebuilding anything."""
  zeroed = jax.tree.map(lambda x: x * 0.0, tiny_teacher.state)
  ids = np.ones((2, 16), np.int32)
  mask = np.ones((2, 16), np.int32)
  base = tiny_teacher.apply(tiny_teacher.state, ids, mask)
  assert not np.allclose(tiny_teacher.apply(zeroed, ids, mask), base)


@pytest.mark.parametrize(
  "config,modes",
  [
    ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, ("cls", "max")),
    ({"pooling_mode": ["mean_sqrt_len_tokens", "cls"]}, ("mean_sqrt_len_tokens", "cls")),
    ({"pooling_mode": "max"}, ("max",)),
  ],
)
def test_pooling_modes(tmp_path, config, modes):
  _write_tiny_model(str(tmp_path), pooling=config)
  _, pooling = hf_loader.load_pooling(str(tmp_path))
  assert pooling == bert.Pooling(modes, normalize=True)

  rng = np.random.default_rng(1)
  hidden = rng.normal(size=(2, 5, 3)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
  got = np.asarray(bert.pool(hidden, mask, bert.Pooling(modes, normalize=False)))
  for row in range(2):
    real = hidden[row, : mask[row].sum()]
    expected = {
      "cls": real[0],
      "max": real.max(0),
      "mean_sqrt_len_tokens": real.sum(0) / math.sqrt(len(real)),
    }
    np.testing.assert_allclose(got[row], np.concatenate([expected[m] for m in modes]), atol=1e-6)


def test_unsupported_pooling_is_refused(tmp_path):
  _write_tiny_model(str(tmp_path), pooling={"pooling_mode": "lasttoken"})
  with pytest.raises(ValueError, match="lasttoken"):
    hf_loader.load_pooling(str(tmp_path))


@pytest.mark.parametrize(
  "missing",
  [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    os.path.join("1_Pooling", "config.json"),
  ],
)
def test_missing_file_is_named(tmp_path, tiny_dir, missing):
  root = str(tmp_path / "model")
  shutil.copytree(tiny_dir, root)
  os.remove(os.path.join(root, missing))
  with pytest.raises(FileNotFoundError, match=missing):
    teacher_lib.load(root, max_tokens=32)


def test_torch_checkpoint_without_torch_says_convert(tmp_path, tiny_dir):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed; the error path needs it absent")
  root = str(tmp_path / "model")
  shutil.copytree(tiny_dir, root)
  os.rename(os.path.join(root, "model.safetensors"), os.path.join(root, "pytorch_model.bin"))
  with pytest.raises(ImportError, match="model.safetensors"):
    teacher_lib.load(root, max_tokens=32)


def test_wrong_shapes_are_named(tmp_path):
  _write_tiny_model(str(tmp_path))
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  config["intermediate_size"] = 48
  with open(tmp_path / "config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="mlp_in"):
    teacher_lib.load(str(tmp_path))


@pytest.mark.parametrize(
  "change,named",
  [
    ({"model_type": "roberta", "architectures": ["RobertaModel"]}, "'roberta'"),
    ({"architectures": ["MPNetModel"]}, "MPNetModel"),
  ],
)
def test_other_model_family_is_refused(tmp_path, change, named):
  # RoBERTa-style weights fit BertEncoder's shapes, so only config.json can
  # tell them apart; loading them would embed wrongly without any error.
  _write_tiny_model(str(tmp_path))
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(dict(config, **change), f)
  with pytest.raises(ValueError) as error:
    teacher_lib.load(str(tmp_path))
  message = str(error.value)
  assert named in message and "('bert',)" in message, message
  assert str(tmp_path) in message, message


def test_inference_truncates_where_sentence_transformers_does(tmp_path, tiny_dir):
  root = str(tmp_path / "model")
  shutil.copytree(tiny_dir, root)
  config = bert.BertConfig.from_hf(json.load(open(os.path.join(root, "config.json"))))
  # No sentence_bert_config.json: the position table (64) or the tokenizer's limit, the smaller.
  assert hf_loader.max_seq_length(root, config) == 64
  with open(os.path.join(root, "tokenizer_config.json"), "w") as f:
    json.dump({"model_max_length": 48}, f)
  assert hf_loader.max_seq_length(root, config) == 48
  with open(os.path.join(root, "sentence_bert_config.json"), "w") as f:
    json.dump({"max_seq_length": 20, "do_lower_case": False}, f)
  assert hf_loader.max_seq_length(root, config) == 20
  teacher = teacher_lib.load(root)  # max_tokens=None: the folder's own limit.
  assert teacher.max_tokens == 20
  long = " ".join(["turn on the lights"] * 10)
  np.testing.assert_allclose(
    teacher.embed([long]), teacher_lib.load(root, max_tokens=20).embed([long]), atol=1e-6
  )
  assert not np.allclose(teacher.embed([long]), teacher_lib.load(root, max_tokens=32).embed([long]))
  assert hf_loader.max_seq_length(hf_loader.default_teacher_path(), config) == 256


def test_minilm_matches_sentence_transformers():
  reference = np.load(_FIXTURE)
  # The fixture uses sentence-transformers' own truncation (256), and one
  # sentence is longer than the Teacher's default 128 tokens.
  teacher = teacher_lib.load(max_tokens=int(reference["max_seq_length"]))
  assert (teacher.dim, teacher.name) == (384, hf_loader.DEFAULT_NAME)
  assert reference["token_counts"].max() > 128
  got = teacher.embed(list(reference["sentences"]), batch_size=16)
  want = reference["embeddings"]
  cosine = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
  assert cosine.min() >= 0.9999, cosine.min()
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_default_teacher_path_is_a_sentence_transformers_folder():
  path = hf_loader.default_teacher_path()
  for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json"):
    assert os.path.exists(os.path.join(path, name)), name
