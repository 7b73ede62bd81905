"""The config contract: every config validates, bad values name their key, args parse strictly."""

import glob
import importlib
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from configs import demo
from stalign import added_keys
from stalign import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
  os.path.basename(p)[:-3]
  for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
  if not p.endswith("__init__.py")
)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_every_config_validates(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  weights = config.features.get("whisper_weights", "")
  fetched_by_hand = config.features.get("frontend") == "whisper" and "/" in weights
  if fetched_by_hand and not os.path.exists(weights):
    # Hugging Face weights fetched by hand (configs/tpu_whisper.py): refused in one line naming
    # them; tests/test_tpu_configs.py checks that config's structure on a tiny fixture.
    with pytest.raises(config_lib.ConfigError, match=re.escape(weights)):
      config_lib.validate_config(config)
    return
  if config.data.source == "manifest" and not config.data.manifests.train:
    # configs/manifest.py reads the user's manifests, named on the command line.
    with pytest.raises(config_lib.ConfigError, match=r"--config\.data\.manifests\.train="):
      config_lib.validate_config(config)
    return
  config_lib.validate_config(config)


@pytest.mark.parametrize(
  "key, value, allowed",
  [
    ("loss.distill", "cosin", "'cosine', 'mse', 'none'"),
    ("model.pooling", "max", "'mean', 'attention'"),
    ("features.ctc_targets", "words", "'chars', 'phonemes'"),
    ("train.schedule", "step", "'cosine', 'linear'"),
    ("train.compute_dtype", "float16", "'float32', 'bfloat16'"),
    ("data.source", "libri", "'an4', 'fsdd', 'librispeech', 'manifest', 'synthetic', 'tfds'"),
  ],
)
def test_unknown_enum_value_names_the_key_and_the_allowed_values(key, value, allowed):
  c = demo.get_config("tiny")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=f"{key}='{value}'.*{allowed}"):
    config_lib.validate_config(c)


@pytest.mark.parametrize(
  "key, value, message",
  [
    (
      "eval.evaluators",
      ("retrieval", "recall"),
      "eval.evaluators has unknown entries \\['recall'\\]",
    ),
    ("train.lr", 0.0, "train.lr=0.0 must be a number > 0"),
    ("model.ctc_layer", 4, "model.ctc_layer=4 is outside the 1 blocks"),
    ("input.bucket_boundaries", (400, 240), "must be distinct positive frame counts"),
    ("eval.zero_shot_templates", ("the speaker says",), "each hold '{}'"),
    ("data.train_extra_speeds", (1.0, 1.1), "speed factors in \\[0.5, 2\\] other than 1"),
    ("data.narrowband_copies", ("an4",), "names sources not in data.train_extra"),
    ("data.real_sources", ("librispeech", "fsdd"), "data.real_sources has unknown entries"),
    ("model.transcript_weight", -0.5, "model.transcript_weight=-0.5 must be a number >= 0"),
    ("model.ctc_lm_weight", -1.0, "model.ctc_lm_weight=-1.0 must be a number >= 0"),
    ("model.ctc_beam_width", 0, "model.ctc_beam_width=0 must be an integer >= 1"),
    ("model.ctc_lm", "no/such.arpa", "model.ctc_lm='no/such.arpa' is not a file: give an ARPA"),
  ],
)
def test_bad_ranges_and_lists_name_the_key(key, value, message):
  c = demo.get_config("tiny")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(c)


def test_a_config_with_no_loss_term_is_refused():
  c = demo.get_config("tiny")
  c.loss.distill, c.loss.contrastive_weight, c.loss.ctc_weight = "none", 0.0, 0.0
  with pytest.raises(config_lib.ConfigError, match="no loss term"):
    config_lib.validate_config(c)


def test_transcript_fusion_without_a_trained_ctc_head_is_refused():
  c = demo.get_config("tiny")
  c.model.transcript_weight, c.loss.ctc_weight = 0.75, 0.0
  with pytest.raises(config_lib.ConfigError, match="loss.ctc_weight=0 leaves untrained"):
    config_lib.validate_config(c)


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"loss.ctc_weight": 0.0}, "model.ctc_lm decodes the CTC head, which loss.ctc_weight=0"),
    ({"features.ctc_targets": "phonemes"}, "features.ctc_targets='phonemes' does not spell"),
  ],
)
def test_a_word_model_without_a_character_ctc_head_is_refused(changes, message):
  c = demo.get_config("tiny")
  c.model.ctc_lm = "english"
  for key, value in changes.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(c)


def test_config_arg_is_parsed_strictly():
  assert demo.get_config("tiny,seed=3").seed == 3 and demo.get_config("tiny").train.steps == 30
  assert demo.get_config(None).train.steps > demo.get_config("tiny").train.steps
  with pytest.raises(config_lib.ConfigError, match="unknown config arg 'tyni'.*'seed', 'tiny'"):
    demo.get_config("tyni")
  with pytest.raises(config_lib.ConfigError, match="needs a value"):
    demo.get_config("seed")


def _main(*args):
  return subprocess.run(
    [sys.executable, "-m", "stalign.main", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_declared_keys_are_overridable_from_the_command_line(tmp_path):
  out = _main(
    "--config=configs/demo.py:tiny",
    f"--workdir={tmp_path}",
    "--stages=",
    "--config.corpus.chunk_size=32",
    "--config.corpus.voices=('en-us',)",
    "--config.eval.zero_shot_templates=('say {}',)",
    "--config.train.steps=7",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["corpus"]["chunk_size"] == 32 and saved["corpus"]["voices"] == ["en-us"]
  assert saved["eval"]["zero_shot_templates"] == ["say {}"] and saved["train"]["steps"] == 7


def test_bad_value_on_the_command_line_is_one_line_and_runs_nothing(tmp_path):
  out = _main("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--config.loss.distill=cos")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  [line] = out.stderr.strip().splitlines()
  assert "loss.distill='cos'" in line and "'cosine', 'mse', 'none'" in line
  assert not os.path.exists(tmp_path / "config.json")


def test_a_config_saved_before_keys_were_added_still_loads_and_validates():
  saved = demo.get_config("tiny").to_dict()
  del saved["model"]["scan_blocks"], saved["eval"]["zero_shot_templates"]
  del saved["data"]["manifests"]["valid"]
  upgraded = config_lib.upgrade(ml_collections.ConfigDict(saved))
  assert upgraded.model.scan_blocks is False and upgraded.data.manifests.valid == ""
  assert tuple(upgraded.eval.zero_shot_templates) == tuple(
    demo.get_config().eval.zero_shot_templates
  )
  config_lib.validate_config(upgraded)


def test_every_added_key_is_declared_in_the_configs_with_its_default():
  """The migration table and the configs agree, so an upgraded old run builds as it was built."""
  c = demo.get_config()
  for path, default in added_keys.ADDED_KEYS.items():
    value = c
    for part in path.split("."):
      value = value[part]
    # Added together with a new recipe value: the default rebuilds old runs, the recipe moved on.
    if path in ("train.channel_augment", "model.ff_mult", "features.remove_dc") or (
      path.startswith("data.real_")
    ):
      if isinstance(default, dict):
        assert set(value) == set(default), path
      else:
        assert type(value) is type(default), path
      continue
    assert value == default or (path.startswith("data.fsdd_speakers") and not value), path


def test_real_held_out_speakers_are_named_by_source_in_one_split_each():
  c = demo.get_config()
  c.data.real_held_out.test = (*c.data.real_held_out.test, "an4/fash")
  with pytest.raises(config_lib.ConfigError, match=r"\['an4/fash'\] in both valid and test"):
    config_lib.validate_config(c)
  c = demo.get_config()
  c.data.real_held_out.valid = ("1088",)
  with pytest.raises(config_lib.ConfigError, match=r"\['1088'\].*SOURCE/SPEAKER"):
    config_lib.validate_config(c)
  c = demo.get_config()
  c.eval.split = "train"
  with pytest.raises(config_lib.ConfigError, match="beside the valid or test split"):
    config_lib.validate_config(c)
  c = demo.get_config()
  c.data.source, c.data.real_held_out.valid = "an4", ("librispeech/1088",)
  with pytest.raises(config_lib.ConfigError, match="data.real_held_out.valid, which names none"):
    config_lib.validate_config(c)
  # A run saved before real speech existed loads with it off.
  saved = demo.get_config().to_dict()
  for key in ("real_sources", "real_held_out", "librispeech_dir", "an4_manifest"):
    del saved["data"][key]
  upgraded = config_lib.upgrade(ml_collections.ConfigDict(saved))
  assert upgraded.data.real_sources == () and upgraded.data.real_held_out.test == ()
  config_lib.validate_config(upgraded)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      {"data.source": "manifest", "data.manifests.train": "t.jsonl"},
      "data.source='manifest' needs a manifest per split; set --config.data.manifests.valid=PATH "
      "--config.data.manifests.test=PATH",
    ),
    ({"corpus.voices": ()}, "corpus.voices is empty; name at least one espeak-ng voice"),
    ({"model.dim": 30, "model.heads": 4}, "model.dim=30 is not divisible by model.heads=4"),
    ({"model.dropout": 1.0}, r"model.dropout=1.0 must be in \[0, 1\)"),
    ({"model.dropout": -0.1}, r"model.dropout=-0.1 must be in \[0, 1\)"),
    ({"train.channel_augment.warp": 0.5}, r"train.channel_augment.warp must be in \[0, 0.5\)"),
    ({"train.channel_augment.eq_db": -1.0}, "train.channel_augment.eq_db=-1.0 must be a number"),
    (
      {"train.channel_augment.lowpass_prob": 1.5},
      r"train.channel_augment.lowpass_prob must be in \[0, 1\], got 1.5",
    ),
    (
      {"train.channel_augment.lowpass_hz": (4000.0, 9000.0)},
      r"lowpass_hz must be 0 < low <= high <= sample_rate / 2, got \(4000.0, 9000.0\)",
    ),
    (
      {"train.channel_augment.lowpass_hz": (4600.0, 3400.0)},
      "lowpass_hz must be 0 < low <= high",
    ),
    ({"init_skip": ("ctc_head",)}, "init_skip is set but init_from is empty"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "more than one axis of -1"),
    ({"mesh.model": 0}, "mesh.model=0 must be a number > 0"),
  ],
)
def test_each_refused_value_names_its_key_and_the_fix(overrides, message):
  c = demo.get_config("tiny")
  for key, value in overrides.items():
    *parents, name = key.split(".")
    node = c
    for parent in parents:
      node = node[parent]
    node[name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(c)


def test_a_mesh_that_does_not_lay_out_the_devices_is_refused_naming_the_count():
  c = demo.get_config("tiny")
  c.mesh.data, c.mesh.fsdp, c.mesh.model = -1, 3, 1
  config_lib.validate_mesh(c, 6)
  with pytest.raises(config_lib.ConfigError, match=r"'fsdp': 3.* the 8 devices.*product is 8"):
    config_lib.validate_mesh(c, 8)
  c.mesh.data = 1  # No axis takes the rest: the product must be the count itself.
  config_lib.validate_mesh(c, 3)
  with pytest.raises(config_lib.ConfigError, match="does not lay out the 6 devices"):
    config_lib.validate_mesh(c, 6)
