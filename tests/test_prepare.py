import glob
import json
import os

import numpy as np
import soundfile as sf

from stalign import prepare
from stalign.data import layout
from stalign.data import sources
from stalign.data import tfrecords

from testdata import fsdd_files
from testdata import tiny_config
from testdata import write_manifest


def test_prepared_split_summary_and_round_trip(prepared_config):
  summary = layout.read_summary(prepared_config.data_dir, "train")
  assert summary["read"] == 60 and summary["written"] + sum(summary["skipped"].values()) == 60
  records = list(tfrecords.iterate_records(layout.list_shards(prepared_config.data_dir, "train")))
  assert len(records) == summary["written"]
  r = records[0]
  assert r["text"] in sources.DIGIT_WORDS
  assert r["features"].shape[1] == prepared_config.features.num_mels
  assert r["teacher_embedding"].shape == (384,)
  assert abs(np.linalg.norm(r["teacher_embedding"]) - 1) < 1e-4  # MiniLM normalises.
  assert len(set(r["id"] for r in records)) == len(records)


def test_bad_inputs_are_skipped_counted_and_named(tmp_path):
  good = fsdd_files("jackson", range(0, 1))[:3]
  silent = str(tmp_path / "silent.wav")
  sf.write(silent, np.zeros(8000, np.float32), 16000)
  garbage = str(tmp_path / "garbage.wav")
  open(garbage, "wb").write(b"not audio" * 100)
  manifest = write_manifest(str(tmp_path / "m.jsonl"), good)
  with open(manifest, "a") as f:
    f.write(json.dumps({"audio_filepath": silent, "text": "one"}) + "\n")
    f.write(json.dumps({"audio_filepath": garbage, "text": "two"}) + "\n")
    f.write(json.dumps({"audio_filepath": good[0], "text": "room 101"}) + "\n")
  config = tiny_config(str(tmp_path / "data"))
  config.data.manifests["train"] = manifest
  summary = prepare.write_split(sources.get("manifest")(config, "train"), config, "train", 2)
  assert summary["read"] == 6 and summary["written"] == 3
  assert sum(summary["skipped"].values()) == 3
  reasons = " ".join(summary["skipped"])
  assert (
    "silent" in reasons and "cannot decode" in reasons and "outside the CTC alphabet" in reasons
  )
  assert garbage in summary["skipped_example"].values()
  assert not glob.glob(os.path.join(config.data_dir, "tfrecords", "*.tmp"))


def test_killed_write_leaves_no_finished_split(tmp_path):
  config = tiny_config(str(tmp_path / "data"))

  def dies():
    yield from sources.read_manifest(
      write_manifest(str(tmp_path / "m.jsonl"), fsdd_files("jackson", range(0, 1))[:2])
    )
    raise KeyboardInterrupt

  try:
    prepare.write_split(dies(), config, "train", 2)
  except KeyboardInterrupt:
    pass
  try:
    layout.list_shards(config.data_dir, "train")
    raise AssertionError("a killed split must not look finished")
  except FileNotFoundError as e:
    assert "stalign.main" in str(e)
  assert not glob.glob(os.path.join(config.data_dir, "tfrecords", "train-*.tfrecord"))
