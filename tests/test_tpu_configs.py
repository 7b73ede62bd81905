"""The paper-scale TPU configs: valid, sized as documented, and runnable here through `:runlocal`.

The end-to-end test writes a tiny LibriSpeech in TFDS's own on-disk format
(the real `librispeech` builder's features, split names and dataset_info, with
generated audio instead of the downloaded archives), so `python -m stalign.main`
reads it through the `tfds` source exactly as it reads a `tfds build` of the
real corpus, with nothing mocked in that process.
"""

import importlib
import json
import os
import subprocess
import sys
from unittest import mock

from flax import nnx
import jax
import numpy as np
import pytest

from stalign import config as config_lib
from stalign.data import features as features_lib
from stalign.models import student as student_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("tpu_multitask", "tpu_asr_pretrain", "tpu_distill")
TEACHER_DIM = 384  # all-MiniLM-L6-v2.
# Chips, hosts, GiB of HBM per chip, and the global batch launch/README.md runs each with.
SLICES = {"v4-32": (16, 4, 32, 256), "v5e-16": (16, 4, 16, 128), "v5e-32": (32, 8, 16, 256)}


def _config(name: str, arg: str = ""):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


@pytest.mark.parametrize("arg", ["", "runlocal", "runlocal,seed=3"])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_tpu_config_validates(name, arg):
  config_lib.validate(_config(name, arg))


@pytest.mark.parametrize("name", CONFIGS)
def test_tiny_is_runlocal(name):
  """`tiny` (what tests/test_config.py passes every config) is the same shrunk config."""
  assert _config(name, "tiny").to_dict() == _config(name, "runlocal").to_dict()


def test_distill_from_asr_warm_starts_the_encoder_and_validates():
  for arg in ("from_asr", "runlocal,from_asr"):
    c = config_lib.validate(_config("tpu_distill", arg))
    assert c.init_from and c.init_skip == ("pool_",) and c.loss.ctc_weight == 0


def test_unknown_config_arg_is_an_error():
  with pytest.raises(config_lib.ConfigError, match="runlocl"):
    _config("tpu_multitask", "runlocl")


def test_full_multitask_student_has_80_to_120m_parameters_as_its_docstring_says():
  c = _config("tpu_multitask")
  abstract = nnx.eval_shape(lambda: student_lib.build(c, TEACHER_DIM))  # No allocation.
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract)))
  assert 80e6 <= count <= 120e6, count
  doc = importlib.import_module("configs.tpu_multitask").__doc__
  assert f"{count:,} parameters" in doc, count


@pytest.mark.parametrize("name", CONFIGS)
def test_runlocal_shrinks_sizes_but_keeps_the_code_paths(name):
  full, local = _config(name), _config(name, "runlocal")
  for key in (
    "data.source",
    "data.tfds_name",
    "data.tfds_splits",
    "train.compute_dtype",
    "loss",
    "sharding_rules",
    "eval.evaluators",
    "eval.split",
    "model.subsample",
    "model.ctc_upsample",
  ):
    assert _get(full, key) == _get(local, key), key
  assert full.data.source == "tfds" and full.data.tfds_name == "librispeech"
  assert full.data.tfds_splits.train == "train_clean100+train_clean360+train_other500"
  assert full.train.compute_dtype == "bfloat16"
  assert len(features_lib.bucket_lengths(local)) <= 2 and local.train.steps <= 10
  assert local.mesh.to_dict() == {"data": -1, "fsdp": 1, "model": 1}


@pytest.mark.parametrize("slice_name", sorted(SLICES))
def test_full_config_fits_the_slices_it_is_sized_for(slice_name):
  """Mesh, batch and shards of the full config on the slices launch/README.md names."""
  chips, hosts, hbm_gib, batch_size = SLICES[slice_name]
  c = _config("tpu_multitask")
  fsdp = c.mesh.fsdp
  assert c.mesh.data == -1 and c.mesh.model == 1 and chips % fsdp == 0
  assert batch_size in (c.input.batch_size, c.input.batch_size // 2)
  # Whole rows per chip, and no more than the docstring's memory budget allows at the longest
  # bucket: ~1.8 GB of temporaries per 36 s utterance, so 16 rows on 32 GiB, 8 on 16 GiB.
  assert batch_size % chips == 0 and batch_size // chips <= hbm_gib // 2
  assert c.data.num_shards >= hosts and c.data.num_shards % hosts == 0  # Same shards per host.
  # FSDP splits every `embed` axis of the parameters: the width must divide.
  assert c.model.dim % fsdp == 0 and c.model.dim % c.model.heads == 0
  # The longest LibriSpeech utterance (35 s) fits the last bucket; buckets stack whole frames.
  buckets = features_lib.bucket_lengths(c)
  assert buckets[-1] >= 3500 and all(b % c.model.subsample == 0 for b in buckets)


# ---------------------------------------------------------------- end to end

# TFDS split -> (utterances, first speaker id): LibriSpeech's subsets have disjoint speakers.
# The three train splits are read as one (data.tfds_splits.train).
SPLITS = {
  "train_clean100": (6, 19),
  "train_clean360": (5, 100),
  "train_other500": (5, 200),
  "dev_clean": (6, 84),
  "test_clean": (8, 1089),
}
WORDS = "THE OLD MAN SAID THAT HE'D SEEN A SHIP UPON THE GREY SEA AT DAWN".split()


def _utterances(split: str, rng: np.random.Generator):
  """LibriSpeech-shaped examples: SPEAKER-CHAPTER-INDEX ids, upper-case text, int16 audio."""
  count, first_speaker = SPLITS[split]
  for i in range(count):
    speaker, chapter = first_speaker + i % 2, 198 + i % 3
    key = f"{speaker}-{chapter}-{i:04d}"
    # One train clip is over runlocal's max_seconds (4 s): the writer must skip and count it.
    seconds = 5.0 if (split == "train_other500" and i == 0) else rng.uniform(1.0, 3.5)
    t = np.arange(int(seconds * 16_000)) / 16_000
    pitch = 100 + 20 * (speaker % 7) + 30 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
    wave = np.sin(2 * np.pi * np.cumsum(pitch) / 16_000) * 6_000 + rng.normal(0, 300, t.size)
    text = " ".join(rng.choice(WORDS, size=rng.integers(3, 9)))
    yield (
      key,
      {
        "id": key,
        "speaker_id": speaker,
        "chapter_id": chapter,
        "speech": wave.astype(np.int16),
        "text": text,
      },
    )


def write_librispeech(tfds_dir: str) -> None:
  """A tiny `librispeech` in TFDS's on-disk format, written by TFDS's own builder.

  The builder's `_split_generators` (which downloads and parses the archives)
  yields generated examples instead. Its download manager is replaced too:
  building one reads the dataset's checksums file through `importlib_resources`,
  which tensorflow-datasets 4.9.10 needs but does not install on Python 3.11.
  """
  import tensorflow_datasets as tfds

  builder = tfds.builder("librispeech", data_dir=tfds_dir)
  rng = np.random.default_rng(0)
  generators = lambda self, dl_manager: {split: _utterances(split, rng) for split in SPLITS}
  with (
    mock.patch.object(type(builder), "_split_generators", generators),
    mock.patch.object(
      type(builder), "_make_download_manager", return_value=mock.MagicMock(downloaded_size=0)
    ),
  ):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
  root = tmp_path_factory.mktemp("librispeech")
  write_librispeech(str(root / "tfds"))
  return root


def _main(config: str, workdir, root, *args: str):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "stalign.main",
      f"--config={config}",
      f"--workdir={workdir}",
      f"--config.data_dir={root / 'data'}",
      f"--config.data.tfds_dir={root / 'tfds'}",
      "--compilation_cache=",
      "--verbosity=0",
      *args,
    ],
    cwd=REPO,
    env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  return out


@pytest.mark.slow
def test_every_tpu_config_runs_locally_on_tfds_librispeech(librispeech, tmp_path):
  """tpu_multitask:runlocal trains and evaluates from TFDS data; the other regimes train on it,
  tpu_distill warm-started from tpu_asr_pretrain (regime b)."""
  root = librispeech
  multitask = tmp_path / "multitask"
  out = _main("configs/tpu_multitask.py:runlocal", multitask, root)
  for line in ("data: train 15 utterances", "train: step 6 of 6", "speech to text R@1"):
    assert line in out.stdout, out.stdout

  tfrecords = root / "data" / "tfrecords"
  train = json.load(open(tfrecords / "train.summary.json"))
  assert train["read"] == 16 and train["written"] == 15  # The three train splits as one.
  assert train["skipped"] == {"AudioError: 5.0 s is longer than features.max_seconds=4.0": 1}
  assert train["speakers"] == {"19": 3, "20": 3, "100": 3, "101": 2, "200": 2, "201": 2}
  valid = json.load(open(tfrecords / "valid.summary.json"))
  assert valid["written"] == 6 and valid["speakers"] == {"84": 3, "85": 3}
  assert "bfloat16" in json.load(open(multitask / "config.json"))["train"]["compute_dtype"]
  history = json.load(open(multitask / "train_history.json"))
  assert [h["step"] for h in history["valid"]] == [3, 6]
  assert all(np.isfinite(h["loss"]) for h in history["train"])
  report = json.load(open(multitask / "report.json"))
  assert report["utterances"] == 8 and report["retrieval"]["speech_to_text"]["gallery"] == 8
  assert report["zero_shot"] == {} and "probing" in report

  # The other regimes reuse the data (the data stage is not rerun): ASR pretraining, then
  # distillation warm-started from its encoder.
  asr = tmp_path / "asr"
  out = _main("configs/tpu_asr_pretrain.py:runlocal", asr, root, "--stages=train")
  assert "train: step 6 of 6" in out.stdout
  assert "loss_distill" not in json.load(open(asr / "train_history.json"))["train"][-1]
  distill = tmp_path / "distill"
  out = _main(
    "configs/tpu_distill.py:runlocal,from_asr",
    distill,
    root,
    "--stages=train",
    f"--config.init_from={asr}",
  )
  assert "train: step 6 of 6" in out.stdout
  assert f"initialised params from {asr}" in out.stderr
  assert "loss_ctc" not in json.load(open(distill / "train_history.json"))["train"][-1]
