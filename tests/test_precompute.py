"""Tests for stalign.precompute: resuming after a kill, the no-op rerun, verify, processes.

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
import threading
import time
from unittest import mock

from jax.experimental import multihost_utils
import numpy as np
import pytest
import tensorflow as tf

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


def _kill_after_first_shard(rewrite):
  def killing(shard, table):
    rewrite(shard, table)
    raise _Killed

  return killing


@pytest.mark.parametrize("kill", ["second_chunk", "after_first_shard"])
def test_resumed_run_equals_uninterrupted_run(make_config, teacher, pristine, monkeypatch, kill):
  whole = make_config("whole")
  counts = precompute.precompute(whole, _SPLITS)

  resumed = make_config("resumed")
  texts_embedded = []
  if kill == "second_chunk":
    embed, texts_embedded = _kill_on_second_chunk(teacher.embed)
    with mock.patch.object(teacher, "embed", embed), pytest.raises(_Killed):
      precompute.precompute(resumed, _SPLITS)
    cached = os.listdir(os.path.join(resumed.data_dir, "teacher_cache"))
    assert len([f for f in cached if f.endswith(".npz")]) == 1, cached
  else:
    with (
      mock.patch.object(
        precompute, "_rewrite_shard", _kill_after_first_shard(precompute._rewrite_shard)
      ),
      pytest.raises(_Killed),
    ):
      precompute.precompute(resumed, _SPLITS)
    done = [
      precompute._has_embeddings(f)
      for s in _SPLITS
      for f in layout.list_shards(resumed.data_dir, s)
    ]
    assert sum(done) == 1, done
  with pytest.raises(RuntimeError, match="without a teacher embedding"):
    precompute.verify(resumed, _SPLITS)

  with mock.patch.object(teacher, "embed", wraps=teacher.embed) as embed:
    assert precompute.precompute(resumed, _SPLITS) == counts
  resumed_texts = [t for call in embed.call_args_list for t in call.args[0]]
  if kill == "second_chunk":  # The finished chunk is reused, not embedded again.
    embedded = texts_embedded[0] + resumed_texts
    assert len(embedded) == len(set(embedded)) == 10

  got, want = _snapshot(resumed.data_dir), _snapshot(whole.data_dir)
  assert not [f for f in got if ".tmp" in f]
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name] == want[name], name

  # Equal to each other is not enough: every example, once, with its own text's embedding.
  before = _records(pristine)
  after = _records(resumed)
  texts = sorted({r["text"] for rs in after.values() for r in rs})
  table = dict(zip(texts, teacher.embed(texts, 256)))
  assert len(texts) == 10
  for split in _SPLITS:
    assert [r["id"] for r in after[split]] == [r["id"] for r in before[split]]
    assert len(after[split]) == counts[split] > 0
    for old, new in zip(before[split], after[split]):
      np.testing.assert_array_equal(new["features"], old["features"])
      np.testing.assert_allclose(new["teacher_embedding"], table[new["text"]], atol=1e-6)
  # The bank of loss.bank_weight: every distinct training transcript once, and nothing else.
  train_texts = sorted({r["text"] for r in after["train"]})
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


def _strip_embeddings(shard: str, drop_last: bool = False) -> None:
  records = list(tfrecords.iterate_records([shard]))
  with tf.io.TFRecordWriter(shard) as writer:
    for record in records[:-1] if drop_last else records:
      writer.write(tfrecords.serialize(dict(record, teacher_embedding=None)))


def test_verify_says_which_split_lacks_embeddings(make_config, pristine):
  with pytest.raises(RuntimeError, match=r"split train: 20 examples .* 20 without a teacher"):
    precompute.verify(pristine, _SPLITS)
  config = make_config("broken")
  precompute.precompute(config, _SPLITS)
  shard = layout.list_shards(config.data_dir, "valid")[1]
  _strip_embeddings(shard)
  with pytest.raises(
    RuntimeError,
    match=r"split valid: 10 examples .* 5 without a teacher "
    r"embedding \(e\.g\. \['valid\.jsonl:",
  ):
    precompute.verify(config, _SPLITS)
  _strip_embeddings(shard, drop_last=True)  # A lost row is caught too.
  with pytest.raises(RuntimeError, match=r"split valid: 9 examples \(summary says 10\)"):
    precompute.verify(config, _SPLITS)


def test_work_split_by_process_index_is_disjoint_and_waits_for_the_stats(
  make_config, teacher, monkeypatch
):
  """precompute's own split of the work, given two process indices: disjoint chunks and shards,
  and no one returning before process 0's stats are written.

  Threads in one process stand in for the processes (`jax.process_index` and the barrier are
  patched): this checks precompute's arithmetic and ordering, not jax.distributed, which the
  two-process tests of stalign.main (tests/test_main.py) run for real.
  """
  config = make_config("two")
  local = threading.local()
  barrier = threading.Barrier(2, timeout=60)
  embedded, rewritten, errors = [], [], []
  rewrite, savez = precompute._rewrite_shard, np.savez

  def slow_savez(*args, **kwargs):
    time.sleep(0.5)  # Process 0 is late with the stats; process 1 must not run ahead.
    savez(*args, **kwargs)

  monkeypatch.setattr("jax.process_count", lambda: 2)
  monkeypatch.setattr("jax.process_index", lambda: local.index)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: barrier.wait())
  monkeypatch.setattr(np, "savez", slow_savez)
  monkeypatch.setattr(
    precompute,
    "_rewrite_shard",
    lambda shard, table: rewritten.append(shard) or rewrite(shard, table),
  )
  monkeypatch.setattr(
    teacher,
    "embed",
    lambda texts, batch_size, embed=teacher.embed: (
      embedded.extend(texts) or embed(texts, batch_size)
    ),
  )

  def process(index):
    local.index = index
    try:
      precompute.precompute(config, _SPLITS)
      assert os.path.exists(os.path.join(config.data_dir, "tfrecords", "teacher_stats.npz"))
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)
      barrier.abort()

  threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise errors[0]
  assert sorted(embedded) == sorted(set(embedded)) and len(embedded) == 10
  shards = [f for s in _SPLITS for f in layout.list_shards(config.data_dir, s)]
  assert sorted(rewritten) == sorted(shards)


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
  config = pristine.copy_and_resolve_references()
  config.data_dir = data_dir
  assert precompute.verify(config, _SPLITS) == {"train": 20, "valid": 10, "test": 10}

  # A data folder with no splits yet: one line naming it and the command that builds them.
  out = _precompute_cli(f"--config={config_file}", f"--config.data_dir={tmp_path / 'empty'}")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  [line] = out.stderr.strip().splitlines()
  for word in ("'train'", str(tmp_path / "empty"), "--stages=data"):
    assert word in line, line
