"""configs/manifest.py trains on a user's manifests and reads nothing else."""

import os

from configs import manifest
from stalign import config as config_lib
from stalign import data
from stalign.data import layout


def test_only_the_manifests_are_read(tmp_path, monkeypatch):
  # With the real speech sets moved away, nothing the config reads may live there.
  monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path / "elsewhere"))
  c = manifest.get_config()
  for split in data.SPLITS:
    c.data.manifests[split] = str(tmp_path / f"{split}.jsonl")
  config_lib.validate_config(c)
  assert c.data.source == "manifest"
  assert c.data.train_extra == () and c.data.real_sources == ()
  assert c.eval.zero_shot == () and "probing" not in c.eval.evaluators
  assert layout.splits(c) == data.SPLITS
  assert not c.train.channel_augment.lowpass_prob


def test_the_real_speech_sets_move_with_one_variable(tmp_path, monkeypatch):
  monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path))
  c = manifest.get_config()
  assert c.data.fsdd_dir == os.path.join(str(tmp_path), "fsdd")
  assert c.data.an4_manifest == os.path.join(str(tmp_path), "an4", "manifest.jsonl")
  assert c.data.librispeech_dir == os.path.join(str(tmp_path), "librispeech_mini")
  monkeypatch.delenv(data.DATA_ROOT_ENV)
  assert data.real_data_dir("fsdd") == os.path.join("..", "shared", "data", "fsdd")
