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
from stalign import data
from stalign.data import features as features_lib
from stalign.models import student as student_lib
from stalign.models import whisper
from stalign.models import whisper_weights

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
  config_lib.validate_config(_config(name, arg))


@pytest.mark.parametrize("name", CONFIGS)
def test_tiny_is_runlocal(name):
  """`tiny` (what tests/test_config.py passes every config) is the same shrunk config."""
  assert _config(name, "tiny").to_dict() == _config(name, "runlocal").to_dict()


def test_distill_from_asr_warm_starts_the_encoder_and_validates():
  for arg in ("from_asr", "runlocal,from_asr"):
    c = config_lib.validate_config(_config("tpu_distill", arg))
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


# ------------------------------------------------- none of the demo's tuning for 8 kHz digits

EVERY_TPU_CONFIG = (*CONFIGS, "tpu_whisper")

# The keys every full TPU config may share with configs/demo.py, each for a reason that holds on
# LibriSpeech: what the demo does is what the TPU recipe means, or the key is not read here.
# Every other inherited value is demo tuning (for FSDD's 8 kHz digits, the espeak-ng corpus, ten
# CPU minutes): a key added to the demo fails the test below until it is set or listed here.
SHARED_WITH_DEMO = {
  "seed",
  # Unread with data.source="tfds", or TFDS's own default folder.
  "data.manifests.train",
  "data.manifests.valid",
  "data.manifests.test",
  "data.tfds_dir",
  "data.train_extra_speeds",
  "data.narrowband_copies",
  "data.fsdd_speakers.valid",  # (): the demo's too; train's FSDD speakers are not.
  "data.fsdd_speakers.test",
  # The standard front end: 80 log-mel bands, 25 ms windows every 10 ms at 16 kHz (Park et al.'s
  # and the Conformer's), DC removed as Kaldi does; characters for CTC. The Whisper keys are read
  # only with features.frontend="whisper", which tpu_whisper sets with its own.
  "features.sample_rate",
  "features.num_mels",
  "features.win_ms",
  "features.hop_ms",
  "features.remove_dc",
  "features.ctc_targets",
  "features.frontend",
  "features.whisper_weights",
  "features.whisper_layers",
  "features.whisper_min_seconds",
  # The model's shape not sized in tpu_multitask: 80 ms frames, 20 ms CTC slots, mean pooling.
  "model.subsample",
  "model.ctc_upsample",
  "model.ctc_layer",
  "model.pooling",
  "model.teacher_layers",
  "model.whisper_tuned_layers",
  # Off: fusing the CTC head's transcript is chosen on a trained model's valid split, which an
  # accelerator's run has not had yet (configs/whisper.py measured it on the CPU recipe).
  "model.transcript_weight",
  # The best path: the word model's weights are chosen on a trained model's valid split too.
  "model.ctc_lm",
  "model.ctc_lm_weight",
  "model.ctc_word_bonus",
  "model.ctc_beam_width",
  # The recipe's losses (set in tpu_multitask, tpu_distill and asr_pretrain.ctc_only).
  "loss.distill",
  "loss.distill_weight",
  "loss.centre_targets",
  "loss.contrastive_weight",
  "loss.bank_weight",
  "loss.ctc_weight",
  "loss.temperature",
  "teacher.path",  # The packaged all-MiniLM-L6-v2, the teacher the TPU docstrings name.
  # The optimiser's generic settings (train.lr is set in tpu_multitask).
  "train.lr",
  "train.schedule",
  "train.grad_clip",
  "train.grad_accumulation",
  "train.max_nonfinite_steps",
  "train.pretrained_lr_factor",
  "train.channel_augment.lowpass_hz",  # Unread: lowpass_prob is 0.
  "init_from",
  "init_skip",
  "mesh.data",
  "mesh.model",
  "sharding_rules",
  # Evaluation: the final report's evaluators and split, and those run during training (at each
  # checkpoint here); templates are unread without zero_shot.
  "eval.split",
  "eval.evaluators",
  "eval.during_training",
  "eval.zero_shot_templates",
}
# tpu_whisper's own choices that happen to equal the demo's: a 15-frame kernel (1.2 s at 80 ms),
# and no frequency masks (they would hit Whisper channels).
SHARED_WITH_DEMO_WHISPER = SHARED_WITH_DEMO | {"model.conv_kernel", "train.spec_augment.freq_masks"}


def _flat(config, prefix: str = "") -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


@pytest.mark.parametrize("arg", ["", "runlocal"])
@pytest.mark.parametrize("name", EVERY_TPU_CONFIG)
def test_tpu_configs_use_no_demo_only_augmentation_or_data(name, arg):
  """SpecAugment as published for LibriSpeech, none of the demo's channel augmentation (tuned to
  carry synthetic speech over to FSDD's 8 kHz digits), and nothing read from the demo's data."""
  c = _config(name, arg)
  channel = c.train.channel_augment
  assert (channel.warp, channel.eq_db, channel.lowpass_prob) == (0, 0, 0), channel.to_dict()
  # Park et al. (2019), LibriSpeech-double: 2 time masks of up to 1 s (T=100 at 10 ms) and, on
  # log-mel, 2 frequency masks of up to 27 of 80 bands. runlocal's short clips get shorter masks.
  spec = c.train.spec_augment
  assert spec.time_masks == 2 and spec.time_width > 0, spec.to_dict()
  if not arg:
    assert spec.time_width * features_lib.frame_ms(c.features) == 1000, spec.to_dict()
  if c.features.frontend == "logmel":
    assert (spec.freq_masks, spec.freq_width, c.features.num_mels) == (2, 27, 80), spec.to_dict()
    assert c.model.dropout == 0.1  # The Conformer's (Gulati et al., 2020); the demo's is 0.
  else:
    assert spec.freq_masks == 0
  assert c.features.sample_rate == 16_000
  # Data: LibriSpeech through TFDS only; no FSDD, no demo real-speech folders, no espeak corpus.
  assert c.data.source == "tfds" and c.data.tfds_name == "librispeech"
  assert not c.data.train_extra and not c.data.real_sources
  assert not c.eval.zero_shot and not c.eval.fsdd_held_out_speakers, c.eval.to_dict()
  held = (*c.data.fsdd_speakers.values(), *c.data.real_held_out.values())
  assert not any(held), held
  corpus = c.corpus
  sizes = {k: corpus[k] for k in ("num_train", "num_valid", "num_test", "num_zero_shot")}
  assert not any(sizes.values()) and not corpus.wordnet_sentences, sizes
  shared_data = os.path.normpath(data.real_data_dir(""))
  paths = [v for k, v in _flat(c.to_dict()).items() if isinstance(v, str) and "corpus." not in k]
  assert not [p for p in paths if p and os.path.normpath(p).startswith(shared_data)], paths
  assert "data/demo" not in c.data_dir and "data/tiny" not in c.data_dir


@pytest.mark.parametrize("name", EVERY_TPU_CONFIG)
def test_tpu_configs_share_with_the_demo_only_the_keys_listed(name):
  """Every value a full TPU config has in common with configs/demo.py is one that
  `SHARED_WITH_DEMO` gives a reason for (the corpus section is unread: data.source is tfds)."""
  full, demo = _flat(_config(name).to_dict()), _flat(_config("demo").to_dict())
  assert full["data.source"] != "synthetic"
  same = {k for k, v in full.items() if k in demo and demo[k] == v and not k.startswith("corpus.")}
  allowed = SHARED_WITH_DEMO_WHISPER if name == "tpu_whisper" else SHARED_WITH_DEMO
  assert not same - allowed, f"demo values {sorted(same - allowed)} inherited unreviewed"


# ------------------------------------------------- configs/tpu_whisper.py (Hugging Face Whisper)

# Tiny random Hugging Face Whisper (2 blocks of width 64; a 100-frame position table, 2 s): it can
# stand in for Whisper small's structure, never for its sizes.
WHISPER_FIXTURE = os.path.join(REPO, "tests", "fixtures", "whisper_tiny_hf")
# openai/whisper-small's encoder (its config.json), which the full config is sized for.
WHISPER_SMALL = whisper_weights.Dims(num_mels=80, width=768, heads=12, layers=12, max_frames=1500)


@pytest.mark.parametrize("arg", ["runlocal", "runlocal,seed=3"])
def test_whisper_runlocal_validates_and_is_tiny(arg):
  """runlocal needs no download: the packaged tiny.en weights."""
  c = config_lib.validate_config(_config("tpu_whisper", arg))
  assert c.features.whisper_weights == "tiny.en"
  assert _config("tpu_whisper", "tiny").to_dict() == _config("tpu_whisper", "runlocal").to_dict()


def test_full_whisper_config_names_its_missing_weights_and_how_to_fetch_them(tmp_path):
  """The full config reads a Hugging Face folder fetched by hand; absent, validation (and the
  command line) stops in one line naming the folder and the command that fetches one."""
  c = _config("tpu_whisper")
  assert c.features.whisper_weights == "checkpoints/whisper-small"
  doc = importlib.import_module("configs.tpu_whisper").__doc__
  assert "huggingface-cli download openai/whisper-small" in doc
  assert "--local-dir checkpoints/whisper-small" in doc
  default = os.path.join(REPO, c.features.whisper_weights)
  if os.path.isdir(default):  # Fetched here: the full config validates against the real weights.
    c.features.whisper_weights = default
    config_lib.validate_config(c)
  missing = str(tmp_path / "whisper-small")
  c.features.whisper_weights = missing
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate_config(c)
  message = str(err.value)
  assert "\n" not in message and missing in message, message
  assert "huggingface-cli download openai/whisper-small" in message, message
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "stalign.main",
      "--config=configs/tpu_whisper.py",
      f"--workdir={tmp_path / 'run'}",
      f"--config.features.whisper_weights={missing}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and lines[-1].startswith("error: features.whisper_weights"), lines
  assert missing in lines[-1] and not (tmp_path / "run").exists()


def test_full_whisper_config_builds_its_structure_on_the_tiny_hf_fixture():
  """The full config with the fixture's 2 blocks in Whisper small's place: 1 frozen, 1 tuned
  (rematerialised, warm-started, Whisper's final norm after it) under the full head."""
  c = _config("tpu_whisper")
  c.features.whisper_weights = WHISPER_FIXTURE
  c.features.whisper_layers = c.model.whisper_tuned_layers = 1
  config_lib.validate_config(c)
  model = nnx.eval_shape(lambda: student_lib.build(c, TEACHER_DIM))
  assert model.whisper.remat and model.whisper.first == 1 and len(model.whisper.blocks) == 1
  assert model.whisper.final_norm is not None
  assert model.frontend.in_features == 64 * c.model.subsample  # Stacked 20 ms Whisper frames.
  assert len(model.blocks) == c.model.depth and model.frontend.out_features == c.model.dim


def test_full_whisper_student_has_the_parameters_its_docstring_says():
  """From Whisper small's shape alone (no weights): its tuned blocks and the head on its frames."""
  c = _config("tpu_whisper")
  first, tuned = c.features.whisper_layers, c.model.whisper_tuned_layers
  assert first + tuned == WHISPER_SMALL.layers and 0 < first and 0 < tuned  # Frozen, then tuned.
  count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module)))
  blocks = count(nnx.eval_shape(lambda: whisper.Blocks(WHISPER_SMALL, first, tuned, nnx.Rngs(0))))
  # The head reads 768-wide frames: built as a student of 768 log-mel bands, it is the same head.
  head_config = _config("tpu_whisper")
  head_config.features.frontend = "logmel"
  head_config.features.num_mels = WHISPER_SMALL.width
  head_config.model.whisper_tuned_layers = 0
  head = count(nnx.eval_shape(lambda: student_lib.build(head_config, TEACHER_DIM)))
  doc = importlib.import_module("configs.tpu_whisper").__doc__
  for figure in (head, blocks, head + blocks):
    assert f"{figure:,}" in doc, (head, blocks)


def test_full_whisper_config_keeps_tpu_multitask_data_mesh_and_batch():
  full, multitask = _config("tpu_whisper"), _config("tpu_multitask")
  for key in (
    "data.source",
    "data.tfds_name",
    "data.tfds_splits",
    "data.num_shards",
    "mesh",
    "sharding_rules",
    "teacher",
    "loss",
    "train.steps",
    "train.lr",
    "train.warmup_steps",
    "train.compute_dtype",
    "eval",
  ):
    assert _get(full, key) == _get(multitask, key), key
  assert full.data_dir != multitask.data_dir  # Other frames: another data folder.
  assert full.features.frontend == "whisper" and full.features.max_seconds == 30.0
  # Whisper's front end: time masks only, no channel augmentation (validation refuses the rest).
  spec, channel = full.train.spec_augment, full.train.channel_augment
  assert spec.freq_masks == 0 and spec.time_masks > 0
  assert not (channel.warp or channel.eq_db or channel.lowpass_prob)
  # Buckets: tpu_multitask's in seconds, counted in 20 ms frames; the last holds 30 s.
  ms = features_lib.frame_ms(full.features)
  assert ms == 20.0
  seconds = lambda c: [b * features_lib.frame_ms(c.features) for b in c.input.bucket_boundaries]
  assert seconds(full) == seconds(multitask)  # In milliseconds.
  buckets = features_lib.bucket_lengths(full)
  assert buckets[-1] * ms >= 30_000 and all(b % full.model.subsample == 0 for b in buckets)
  # FSDP splits every `embed` axis: Whisper small's width and the head's must divide.
  fsdp = full.mesh.fsdp
  assert WHISPER_SMALL.width % fsdp == 0 and full.model.dim % fsdp == 0
  assert full.model.dim % full.model.heads == 0 and full.model.remat


# Chips, GiB of HBM per chip, and the global batch configs/tpu_whisper.py's docstring gives each.
WHISPER_SLICES = {"v4-32": (16, 32, 128), "v5e-32": (32, 16, 128), "v5e-16": (16, 16, 64)}


@pytest.mark.parametrize("slice_name", sorted(WHISPER_SLICES))
def test_full_whisper_config_fits_the_slices_its_docstring_names(slice_name):
  """Whole rows per chip within XLA's planned upper bound at the 30 s bucket: 47.1 GB for 16
  utterances (the docstring), ~2.9 GB each, which must fit the chip's HBM even if remat saved
  nothing."""
  chips, hbm_gib, batch_size = WHISPER_SLICES[slice_name]
  c = _config("tpu_whisper")
  doc = importlib.import_module("configs.tpu_whisper").__doc__
  assert "47.1 GB" in doc and slice_name in doc.replace("\n  ", " ")
  assert batch_size in (c.input.batch_size, c.input.batch_size // 2)
  assert batch_size % chips == 0 and chips % c.mesh.fsdp == 0
  assert batch_size // chips * 47.1e9 / 16 < hbm_gib * 2**30


def test_whisper_runlocal_shrinks_sizes_but_keeps_the_code_paths():
  full, local = _config("tpu_whisper"), _config("tpu_whisper", "runlocal")
  for key in (
    "data.source",
    "data.tfds_name",
    "data.tfds_splits",
    "features.frontend",
    "train.compute_dtype",
    "train.pretrained_lr_factor",
    "train.spec_augment.freq_masks",
    "train.spec_augment.time_masks",
    "train.channel_augment",
    "loss",
    "sharding_rules",
    "eval.evaluators",
    "eval.split",
    "model.subsample",
    "model.ctc_upsample",
    "model.remat",
    "model.scan_blocks",
  ):
    assert _get(full, key) == _get(local, key), key
  assert (local.features.whisper_layers, local.model.whisper_tuned_layers) == (1, 1)
  assert len(features_lib.bucket_lengths(local)) <= 2 and local.train.steps <= 10
  assert local.mesh.to_dict() == {"data": -1, "fsdp": 1, "model": 1}


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


def _main(config: str, workdir, root, *args: str, data: str = "data"):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "stalign.main",
      f"--config={config}",
      f"--workdir={workdir}",
      f"--config.data_dir={root / data}",
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


def _assert_losses_add_up(run, history: dict, parts: set[str]) -> None:
  """Every logged step's loss is finite and the config's weighted sum of the parts it names."""
  weights = json.load(open(run / "config.json"))["loss"]
  for h in history["train"]:
    logged = {k.removeprefix("loss_"): v for k, v in h.items() if k.startswith("loss_")}
    assert set(logged) == parts and np.isfinite(h["loss"]), h
    total = sum(weights[f"{k}_weight"] * v for k, v in logged.items())
    assert h["loss"] == pytest.approx(total, rel=1e-4), h


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
  _assert_losses_add_up(multitask, history, {"distill", "contrastive", "ctc"})
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


@pytest.mark.slow
def test_whisper_runlocal_runs_end_to_end_on_tfds_librispeech(librispeech, tmp_path):
  """tpu_whisper:runlocal: Whisper tiny.en's block 0 frozen into its own data folder, block 1
  fine-tuned from the weights under a Conformer head, then evaluated, from the same TFDS data."""
  root = librispeech
  run = tmp_path / "whisper"
  out = _main("configs/tpu_whisper.py:runlocal", run, root, data="data_whisper")
  for line in ("data: train 15 utterances", "train: step 6 of 6", "speech to text R@1"):
    assert line in out.stdout, out.stdout
  assert "Whisper tiny.en: blocks 0-0 frozen (in the data), 1 more fine-tuned from it at 0.05" in (
    out.stderr
  )

  train = json.load(open(root / "data_whisper" / "tfrecords" / "train.summary.json"))
  assert train["read"] == 16 and train["written"] == 15
  assert train["skipped"] == {"AudioError: 5.0 s is longer than features.max_seconds=4.0": 1}
  assert (train["frontend"], train["whisper_weights"], train["whisper_layers"]) == (
    "whisper",
    "tiny.en",
    1,
  )
  history = json.load(open(run / "train_history.json"))
  assert [h["step"] for h in history["valid"]] == [3, 6]
  _assert_losses_add_up(run, history, {"distill", "contrastive", "ctc"})
  report = json.load(open(run / "report.json"))
  assert report["utterances"] == 8 and report["retrieval"]["speech_to_text"]["gallery"] == 8

  # The tuned block started from tiny.en's block 1 and trained: near it, not equal to it.
  import stalign

  flat, _ = whisper_weights.load("tiny.en")
  tuned = np.asarray(stalign.load(str(run)).params["whisper"]["blocks"][0]["fc1"]["kernel"][...])
  pretrained = flat["blocks/1/fc1/kernel"]
  assert tuned.shape == pretrained.shape and not np.array_equal(tuned, pretrained)
  assert np.abs(tuned - pretrained).max() < 0.01 * np.abs(pretrained).max()
