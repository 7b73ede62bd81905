"""Tests for stalign.precompute: resuming after a kill, the no-op rerun, no shard rewritten,
processes.

The data is real FSDD speech written to TFRecords through the manifest source
(without precompute), copied fresh for each test. Chunks are shrunk to three
transcripts, so the ten distinct transcripts make four chunks and a kill can
land between them.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

from stalign import precompute
from stalign import prepare
from stalign.data import layout
from stalign.data import sources
from stalign.data import tfrecords
from stalign.models import teacher as teacher_lib

import testdata
from testdata import REPO
from testdata import fsdd_files
from testdata import tiny_config
from testdata import write_manifest

_SPLITS = ("train", "valid", "test")


class _Killed(Exception):
  """Stands in for the process dying at a chosen point."""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """A data dir whose TFRecords hold no teacher embeddings yet."""
  root = str(tmp_path_factory.mktemp("precompute"))
  config = tiny_config(os.path.join(root, "data"))
  files = {
    "train": fsdd_files("jackson", range(0, 2)),
    "valid": fsdd_files("lucas", range(0, 1)),
    "test": fsdd_files("nicolas", range(0, 1)),
  }
  for split in _SPLITS:
    manifest = os.path.join(root, f"{split}.jsonl")
    config.data.manifests[split] = write_manifest(manifest, files[split])
    prepare.write_split(
      sources.get("manifest")(config, split), config, split, config.data.num_shards
    )
  return config


@pytest.fixture(scope="module")
def teacher(pristine):
  """One loaded teacher for every run here; loading and compiling dominate a run's time."""
  return teacher_lib.from_config(pristine)


@pytest.fixture
def make_config(pristine, tmp_path, monkeypatch, teacher):
  """Fresh copies of the pristine data, precomputed with small chunks."""
  monkeypatch.setattr(precompute, "CHUNK", 3)
  monkeypatch.setattr(teacher_lib, "from_config", lambda config: teacher)

  def make(name: str):
    config = pristine.copy_and_resolve_references()
    config.data_dir = str(tmp_path / name)
    shutil.copytree(pristine.data_dir, config.data_dir)
    return config

  return make


def _snapshot(data_dir: str) -> dict[str, bytes]:
  files = {}
  for folder, _, names in os.walk(data_dir):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, data_dir)] = f.read()
  return files


def _records(config) -> dict[str, list[dict]]:
  return {
    s: list(tfrecords.iterate_records(layout.list_shards(config.data_dir, s))) for s in _SPLITS
  }


def _kill_on_second_chunk(embed):
  calls = []

  def killing(texts, batch_size):
    calls.append(list(texts))
    if len(calls) == 2:
      raise _Killed
    return embed(texts, batch_size)

  return killing, calls


def _teacher_files(data_dir: str) -> dict[str, bytes]:
  return {
    name: data
    for name, data in _snapshot(data_dir).items()
    if name.startswith("teacher_cache") or "teacher" in name or "text_bank" in name
  }


def test_resumed_run_equals_uninterrupted_run(make_config, teacher, pristine):
  whole = make_config("whole")
  counts = precompute.precompute(whole, _SPLITS)

  resumed = make_config("resumed")
  embed, texts_embedded = _kill_on_second_chunk(teacher.embed)
  with mock.patch.object(teacher, "embed", embed), pytest.raises(_Killed):
    precompute.precompute(resumed, _SPLITS)
  cached = os.listdir(os.path.join(resumed.data_dir, "teacher_cache"))
  assert len([f for f in cached if f.endswith(".npz")]) == 1, cached
  assert not os.path.exists(layout.teacher_table_path(resumed.data_dir))

  with mock.patch.object(teacher, "embed", wraps=teacher.embed) as embed:
    assert precompute.precompute(resumed, _SPLITS) == counts
  resumed_texts = [t for call in embed.call_args_list for t in call.args[0]]
  embedded = texts_embedded[0] + resumed_texts  # The finished chunk is reused, not redone.
  assert len(embedded) == len(set(embedded)) == 10

  got, want = _snapshot(resumed.data_dir), _snapshot(whole.data_dir)
  assert not [f for f in got if ".tmp" in f]
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name] == want[name], name

  # Equal to each other is not enough: every distinct transcript once, with its own embedding,
  # and not one shard rewritten.
  records = _records(pristine)
  texts = sorted({r["text"] for rs in records.values() for r in rs})
  table = dict(zip(texts, teacher.embed(texts, 256)))
  stored_texts, stored = layout.read_teacher_table(resumed.data_dir)
  assert stored_texts.tolist() == texts and len(texts) == 10
  only = layout.read_teacher_table(resumed.data_dir, embeddings=False)  # What `_is_done` reads.
  assert len(only) == 1 and only[0].tolist() == texts
  np.testing.assert_allclose(stored, [table[t] for t in texts], atol=1e-6)
  shards = {n: d for n, d in _snapshot(pristine.data_dir).items() if n.endswith(".tfrecord")}
  assert shards and all(got[name] == data for name, data in shards.items())
  # The bank of loss.bank_weight: every distinct training transcript once, and nothing else.
  train_texts = sorted({r["text"] for r in records["train"]})
  bank = layout.read_text_bank(resumed.data_dir)
  np.testing.assert_allclose(bank, [table[t] for t in train_texts], atol=1e-6)


def test_finished_dataset_is_left_alone(make_config):
  config = make_config("done")
  counts = precompute.precompute(config, _SPLITS)
  before = _snapshot(config.data_dir)
  times = {f: os.stat(os.path.join(config.data_dir, f)).st_mtime_ns for f in before}
  with mock.patch.object(teacher_lib, "from_config", side_effect=AssertionError("loaded")):
    assert precompute.precompute(config, _SPLITS) == counts
  assert _snapshot(config.data_dir) == before
  assert {f: os.stat(os.path.join(config.data_dir, f)).st_mtime_ns for f in before} == times


def test_a_table_without_some_transcript_is_completed_not_trusted(make_config, teacher):
  """A table written for fewer transcripts (a split added to the folder since) is rebuilt."""
  config = make_config("partial")
  precompute.precompute(config, _SPLITS)
  texts, embeddings = layout.read_teacher_table(config.data_dir)
  with open(layout.teacher_table_path(config.data_dir), "wb") as f:
    np.savez(f, texts=texts[1:], embeddings=embeddings[1:])
  with mock.patch.object(teacher, "embed", wraps=teacher.embed) as embed:
    precompute.precompute(config, _SPLITS)
  assert embed.call_count == 0  # Every chunk was cached: the table is rebuilt from them.
  again, rebuilt = layout.read_teacher_table(config.data_dir)
  assert again.tolist() == texts.tolist()
  np.testing.assert_array_equal(rebuilt, embeddings)


def test_work_split_by_process_index_is_disjoint_and_waits_for_the_stats(
  make_config, teacher, monkeypatch
):
  """precompute's own split of the work, given two process indices (`testdata.as_processes`):
  disjoint chunks, and no one returning before process 0's stats are written."""
  config = make_config("two")
  embedded, savez = [], np.savez

  def slow_savez(*args, **kwargs):
    time.sleep(0.5)  # Process 0 is late with the stats; process 1 must not run ahead.
    savez(*args, **kwargs)

  monkeypatch.setattr(np, "savez", slow_savez)
  monkeypatch.setattr(
    teacher,
    "embed",
    lambda texts, batch_size, embed=teacher.embed: (
      embedded.extend(texts) or embed(texts, batch_size)
    ),
  )

  def process(index):
    precompute.precompute(config, _SPLITS)
    assert os.path.exists(os.path.join(config.data_dir, "tfrecords", "teacher_stats.npz"))

  testdata.as_processes(monkeypatch, process)
  assert sorted(embedded) == sorted(set(embedded)) and len(embedded) == 10


def test_teacher_batches_span_all_local_devices(pristine, teacher):
  """precompute's teacher in a process with two devices: its batches split over both, with the
  embeddings of one device (this process's `teacher`, loaded from the same config)."""
  script = """
import json
from stalign.models import teacher as teacher_lib
import testdata
teacher = teacher_lib.from_config(testdata.tiny_config("unused"))
calls, apply = [], teacher.apply
def recording(state, ids, mask):
  calls.append(len(ids.sharding.device_set))
  return apply(state, ids, mask)
teacher.apply = recording
embeddings = teacher.embed(["one", "two", "three"]).tolist()
print(json.dumps([teacher.mesh.devices.size, teacher.name, calls, embeddings]))
"""
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    PYTHONPATH=os.path.join(REPO, "tests"),
  )
  out = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  devices, name, calls, embeddings = json.loads(out.stdout.splitlines()[-1])
  assert (devices, name, calls) == (2, teacher.name, [2])
  assert teacher.mesh is None  # One device here: embedded unsplit.
  want = teacher.embed(["one", "two", "three"])
  assert want.shape == (3, 384)
  np.testing.assert_allclose(embeddings, want, atol=1e-5)


def _precompute_cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "stalign.precompute", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_command_line_embeds_every_split_and_refuses_a_missing_data_folder(pristine, tmp_path):
  """`python -m stalign.precompute` as users run it: every split of the config, then verified."""
  data_dir = str(tmp_path / "data")
  shutil.copytree(pristine.data_dir, data_dir)
  config_file = testdata.write_config(
    tmp_path / "config.py", data_dir, {s: pristine.data.manifests[s] for s in _SPLITS}
  )
  out = _precompute_cli(f"--config={config_file}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "{'train': 20, 'valid': 10, 'test': 10}"
  assert len(layout.read_teacher_table(data_dir)[0]) == 10

  # A stray positional argument: one line naming it and where settings go.
  out = _precompute_cli(f"--config={config_file}", "data")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  [line] = out.stderr.strip().splitlines()
  assert "unexpected arguments ['data']" in line and "--config.KEY=VALUE" in line, line

  # A data folder with no splits yet: one line naming it and the command that builds them.
  out = _precompute_cli(f"--config={config_file}", f"--config.data_dir={tmp_path / 'empty'}")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  [line] = out.stderr.strip().splitlines()
  for word in ("'train'", str(tmp_path / "empty"), "--stages=data"):
    assert word in line, line
