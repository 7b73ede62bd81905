"""The Whisper front end end to end: frozen frames in the data, the student on them, its optimizer.

Tiny random Whisper weights (`testdata.write_tiny_whisper`) and real FSDD clips: the same code
path as the pretrained encoder, at test speed.
"""

import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stalign
from stalign import config as config_lib
from stalign import prepare
from stalign import train
from stalign import train_optimizer
from stalign.data import audio
from stalign.data import layout
from stalign.data import tfrecords
from stalign.models import frontend
from stalign.models import student
from stalign.models import whisper
from stalign.models import whisper_weights

import testdata


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  return testdata.write_tiny_whisper(str(tmp_path_factory.mktemp("whisper") / "model.bin"))


def whisper_config(data_dir: str, weights: str, **model):
  c = testdata.tiny_config(data_dir)
  c.features.frontend = "whisper"
  c.features.whisper_weights = weights
  c.features.whisper_layers = 1
  c.model.subsample = 2
  c.train.channel_augment.update(dict(warp=0.0, eq_db=0.0, lowpass_prob=0.0))
  c.data.manifests.update({split: f"{split}.jsonl" for split in ("train", "valid", "test")})
  for key, value in model.items():
    c.model[key] = value
  return config_lib.validate_config(c)


def test_featurize_is_the_frozen_encoder_prefix_at_20_ms(weights, tmp_path):
  c = whisper_config(str(tmp_path), weights)
  wave = audio.load_audio(testdata.fsdd_files("george", range(1))[0], 16_000, 10.0)
  wave = wave + 0.05  # A DC offset, removed first as for log-mel.
  frames = frontend.featurize(wave, c.features)
  mel = whisper.log_mel(wave - wave.mean())
  assert frames.dtype == np.float16 and frames.shape == ((len(wave) // 160 + 1) // 2, 32)
  encoder = whisper.pretrained_encoder(weights, layers=1)
  direct, _ = encoder(jnp.asarray(mel[None]), jnp.array([mel.shape[0]]))
  np.testing.assert_allclose(frames, direct[0], atol=2e-2, rtol=1e-2)  # float16 storage.
  assert frontend.feature_dim(c.features) == 32


def test_short_clips_are_encoded_with_silence_after_them_and_keep_their_own_frames(
  weights, tmp_path
):
  """`features.whisper_min_seconds`: a clip under it is encoded as Whisper's training saw
  clips, followed by silence, and keeps its own frame count; a longer clip is unchanged."""
  c = whisper_config(str(tmp_path), weights)
  wave = audio.load_audio(testdata.fsdd_files("george", range(1))[0], 16_000, 10.0)
  wave = wave - wave.mean()
  alone = frontend.featurize(wave, c.features)
  c.features.whisper_min_seconds = 2.0
  followed = frontend.featurize(wave, c.features)
  assert followed.shape == alone.shape and not np.allclose(followed, alone, atol=2e-2)
  with_silence = np.pad(wave, (0, 32_000 - wave.size))
  mel = whisper.log_mel(with_silence)
  encoder = whisper.pretrained_encoder(weights, layers=1)
  direct, _ = encoder(jnp.asarray(mel[None]), jnp.array([mel.shape[0]]))
  np.testing.assert_allclose(followed, direct[0, : len(alone)], atol=2e-2, rtol=1e-2)
  c.features.whisper_min_seconds = 0.5 * wave.size / 16_000
  np.testing.assert_array_equal(frontend.featurize(wave, c.features), alone)


def test_student_tunes_the_next_whisper_blocks_from_the_pretrained_weights(weights, tmp_path):
  c = whisper_config(str(tmp_path), weights, whisper_tuned_layers=1)
  model = student.build(c, embed_dim=16)
  flat, _ = whisper_weights.load(weights)
  np.testing.assert_array_equal(
    model.whisper.blocks[0].fc1.kernel[...], flat["blocks/1/fc1/kernel"]
  )
  assert model.whisper.final_norm is not None  # Block 1 is the last: Whisper's final norm follows.
  # Padding frames change nothing that the real frames give.
  x = jax.random.normal(jax.random.key(0), (2, 40, 32))
  model.eval()
  short = model(x[:1, :20], jnp.array([20]))["embedding"]
  padded = model(x[:1], jnp.array([20]))["embedding"]
  np.testing.assert_allclose(short, padded, atol=1e-5)


def test_pretrained_blocks_learn_at_their_factor_of_the_rate(weights, tmp_path):
  c = whisper_config(str(tmp_path), weights, whisper_tuned_layers=1)
  c.train.pretrained_lr_factor = 0.25
  params = nnx.state(student.build(c, embed_dim=16))
  grads = jax.tree.map(jnp.ones_like, params)
  mask = train_optimizer.is_pretrained(params)
  assert any(jax.tree.leaves(mask)) and not all(jax.tree.leaves(mask))

  def first_update(config):
    tx = train_optimizer.make_optimizer(config, train_optimizer.make_schedule(config))
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates

  scaled = first_update(c)
  c.train.pretrained_lr_factor = 1.0
  plain = first_update(c)
  for m, a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(scaled), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b * (0.25 if m else 1.0), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.channel_augment.warp": 0.1}, "channel_augment"),
    ({"train.spec_augment.freq_masks": 2}, "freq_masks"),
    ({"features.whisper_layers": 3}, "exceed"),
    ({"features.max_seconds": 40.0}, "30 s"),
    ({"features.whisper_min_seconds": -1.0}, "whisper_min_seconds=-1.0 must be in"),
    ({"features.hop_ms": 20.0}, "hop_ms"),
    ({"features.whisper_weights": "large-v9"}, "not found"),
  ],
)
def test_whisper_settings_that_cannot_work_are_refused_by_name(
  weights, tmp_path, overrides, message
):
  c = whisper_config(str(tmp_path), weights)
  c.update_from_flattened_dict(overrides)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(c)


def test_tuned_layers_need_the_whisper_front_end(tmp_path):
  c = testdata.tiny_config(str(tmp_path))
  c.data.manifests.update({split: f"{split}.jsonl" for split in ("train", "valid", "test")})
  c.model.whisper_tuned_layers = 1
  with pytest.raises(config_lib.ConfigError, match="frontend=whisper"):
    config_lib.validate_config(c)


def test_data_train_and_inference_agree_on_whisper_frames(weights, tmp_path):
  """The data stage stores the frozen frames, a run trains on them, `stalign.load` embeds a
  file through the same front end, and a log-mel folder is refused for a Whisper config."""
  root = str(tmp_path)
  c = whisper_config(os.path.join(root, "data"), weights)
  c.train.steps = 4
  for split, speaker in (("train", "jackson"), ("valid", "lucas"), ("test", "nicolas")):
    files = testdata.fsdd_files(speaker, range(2))
    c.data.manifests[split] = testdata.write_manifest(os.path.join(root, f"{split}.jsonl"), files)
  prepare.prepare(c)
  summary = layout.read_summary(c.data_dir, "train")
  assert summary["frontend"] == "whisper" and summary["whisper_layers"] == 1
  workdir = os.path.join(root, "run")
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(c.to_json_best_effort())
  train.train_and_evaluate(c, workdir)
  model = stalign.load(workdir)
  clip = testdata.fsdd_files("nicolas", range(1))[0]
  from_file = model.encode_speech([clip])
  records = tfrecords.iterate_records(layout.list_shards(c.data_dir, "test"))
  stored = next(r for r in records if r["id"] == "test.jsonl:1")["features"]
  from_record = model.embed_windows([[stored.astype(np.float32)]])
  np.testing.assert_allclose(from_file, from_record, atol=1e-4)
  assert json.load(open(os.path.join(workdir, "config.json")))["features"]["frontend"] == "whisper"

  logmel = testdata.tiny_config(c.data_dir)
  logmel.data.manifests.update(c.data.manifests.to_dict())
  with pytest.raises(ValueError, match="features.frontend='whisper'"):
    prepare.prepare(logmel)
