import contextlib
import dataclasses
import os
import shutil
from unittest import mock

import numpy as np
import pytest

from stalign import input_pipeline
from stalign.data import features
from stalign.data import layout
from stalign.data import text
from stalign.data import tfrecords

from testdata import with_buckets


def _assert_padded_to_its_bucket(batch: dict, config, rows: np.ndarray) -> int:
  """Every real row's own bucket is the batch's length; CTC targets are cut to that bucket."""
  buckets = features.bucket_lengths(config)
  padded = batch["features"].shape[1]
  own = {
    features.padded_length(n, buckets, config.model.subsample) for n in batch["num_frames"][rows]
  }
  assert own == {padded}, (sorted(batch["num_frames"][rows]), padded)
  columns = features.ctc_frames(padded, config.model)
  assert batch["ctc_labels"].shape[1] == columns
  for labels, transcript in zip(batch["ctc_labels"][rows], batch["text"][rows]):
    expected = text.encode(transcript.decode())[:columns]
    np.testing.assert_array_equal(labels, np.pad(expected, (0, columns - len(expected))))
  return padded


def test_train_batches_pad_to_their_utterances_bucket_and_cut_ctc_targets_to_it(prepared_config):
  c = with_buckets(prepared_config)
  it = input_pipeline.train_iterator(c, "train", 384)
  seen = set()
  for _ in range(12):  # Two epochs.
    b = next(it)
    assert b["features"].shape[0] == c.input.batch_size
    assert b["teacher"].shape == (c.input.batch_size, 384)
    seen.add(_assert_padded_to_its_bucket(b, c, np.arange(c.input.batch_size)))
  assert len(seen) >= 2, f"every batch fell in one bucket {seen}: the test crosses none"


def test_a_train_batch_holds_its_planned_records_stored_features_zero_padded(prepared_config):
  """A planned batch is parsed in one call (features padded as they are decoded): each row is its
  record's stored float16 frames, then zeros; its label count is capped where the longest bucket
  aligns no more."""
  c = with_buckets(prepared_config)
  index = input_pipeline.record_index(c, "train")
  plan = input_pipeline.epoch_plan(index, c, 0)
  it = input_pipeline.train_iterator(c, "train", 384)
  cap = input_pipeline.max_label_length(c)
  for rows in plan[:4]:
    batch = next(it)
    for i, record in enumerate(tfrecords.deserialize(raw) for raw in index.read(rows)):
      n = len(record["features"])
      assert batch["num_frames"][i] == n and batch["text"][i].decode() == record["text"]
      np.testing.assert_array_equal(batch["features"][i, :n], record["features"])
      assert not batch["features"][i, n:].any()
      assert batch["num_labels"][i] == min(len(record["ctc_labels"]), cap)
      assert batch["duration"][i] == np.float32(record["duration"])


def test_eval_batches_pad_to_their_utterances_bucket_and_cut_ctc_targets_to_it(prepared_config):
  c = with_buckets(prepared_config)
  seen = set()
  for b in input_pipeline.eval_batches(c, "test", 384, 8):
    seen.add(_assert_padded_to_its_bucket(b, c, np.flatnonzero(b["valid"])))
  assert len(seen) >= 2, f"every batch fell in one bucket {seen}: the test crosses none"


def test_resume_position_continues_with_the_same_batches(prepared_config):
  c = prepared_config
  full = input_pipeline.train_iterator(c, "train", 384)
  batches = [next(full) for _ in range(9)]
  epochs = [int(b["epoch"][0]) for b in batches]
  assert len(set(epochs)) > 1, "need an epoch boundary in the window"
  k = 5
  position = {"epoch": epochs[k - 1], "batch": sum(e == epochs[k - 1] for e in epochs[:k])}
  resumed = input_pipeline.train_iterator(c, "train", 384, position)
  for expected in batches[k:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["features"], expected["features"])


@contextlib.contextmanager
def _as_process(index: int, count: int = 2):
  with (
    mock.patch("jax.process_count", return_value=count),
    mock.patch("jax.process_index", return_value=index),
  ):
    yield


def _take(iterator, n: int) -> list[dict]:
  return [next(iterator) for _ in range(n)]


def test_processes_read_their_rows_of_the_global_batches_and_resume_alike(prepared_config):
  """Two processes' rows make up the one-process batches (same bucket on both), and each
  process, resumed in the second epoch, continues with its own uninterrupted batches."""
  c = with_buckets(prepared_config)
  whole = _take(input_pipeline.train_iterator(c, "train", 384), 10)
  per_epoch = input_pipeline.batches_per_epoch(input_pipeline.record_index(c, "train"), c)
  k = per_epoch + 2  # Two batches into the second epoch.
  assert k < len(whole) and len({tuple(b["features"].shape) for b in whole}) > 1
  rows = c.input.batch_size // 2
  for process in range(2):
    with _as_process(process):
      mine = _take(input_pipeline.train_iterator(c, "train", 384), len(whole))
      resumed = _take(
        input_pipeline.train_iterator(c, "train", 384, {"epoch": 1, "batch": 2}), len(whole) - k
      )
    for got, full in zip(mine, whole):
      for key in ("features", "text", "teacher", "ctc_labels", "epoch"):
        np.testing.assert_array_equal(got[key], full[key][process * rows : (process + 1) * rows])
    for got, expected in zip(resumed, mine[k:]):
      for key in ("features", "text", "epoch"):
        np.testing.assert_array_equal(got[key], expected[key])


def test_resuming_reads_no_record_of_the_batches_before_it(prepared_config):
  c = with_buckets(prepared_config)
  index = input_pipeline.record_index(c, "train")
  plan = input_pipeline.epoch_plan(index, c, 3)
  requested = []
  real_read = tfrecords.RecordIndex.read

  def read(self, rows):
    requested.append(list(rows))
    return real_read(self, rows)

  with mock.patch.object(tfrecords.RecordIndex, "read", read):
    it = input_pipeline.train_iterator(c, "train", 384, {"epoch": 3, "batch": 2})
    first = next(it)
  # Reads run in parallel threads (`num_parallel_calls`), so the order of the calls is the
  # threads' and not the plan's: the batch it yields was read, and every read is of a batch
  # at or after it.
  assert list(plan[2]) in requested
  assert all(r in (list(b) for b in plan[2:]) for r in requested[: len(plan) - 2])
  np.testing.assert_array_equal(first["num_frames"], index.num_frames[plan[2]])


def test_epoch_plan_is_fixed_by_seed_and_epoch_with_one_bucket_per_batch(prepared_config):
  c = with_buckets(prepared_config)
  index = input_pipeline.record_index(c, "train")
  buckets = features.bucket_lengths(c)
  plans = [input_pipeline.epoch_plan(index, c, e) for e in (0, 1)]
  np.testing.assert_array_equal(plans[0], input_pipeline.epoch_plan(index, c, 0))
  assert not np.array_equal(plans[0], plans[1])
  for plan in plans:
    assert plan.shape == (input_pipeline.batches_per_epoch(index, c), c.input.batch_size)
    assert len(set(plan.ravel())) == plan.size  # No record twice in an epoch.
    for batch in plan:
      padded = {
        features.padded_length(n, buckets, c.model.subsample) for n in index.num_frames[batch]
      }
      assert len(padded) == 1


def _synthetic_index(records: int, shards: int, frames: np.ndarray) -> tfrecords.RecordIndex:
  shard = np.repeat(np.arange(shards), records // shards).astype(np.int32)
  return tfrecords.RecordIndex(
    path="synthetic",
    files=tuple(f"shard-{i}" for i in range(shards)),
    shard=shard,
    offset=np.zeros(records, np.int64),
    length=np.zeros(records, np.int64),
    num_frames=frames.astype(np.int32),
  )


def test_epoch_plan_shuffles_within_windows_of_the_shuffle_buffer(prepared_config):
  """With one shard the base order is the file order, so records mix only within a window."""
  c = prepared_config.copy_and_resolve_references()
  index = _synthetic_index(1000, 1, np.full(1000, 50))
  c.input.shuffle_buffer = 100
  order = input_pipeline.epoch_plan(index, c, 0).ravel()
  assert np.all(np.diff(order // 100) >= 0) and not np.all(np.diff(order) > 0)
  c.input.shuffle_buffer = 1
  np.testing.assert_array_equal(input_pipeline.epoch_plan(index, c, 0).ravel(), np.arange(1000))


def test_the_index_reads_every_record_at_its_offset(prepared_config):
  """The data stage wrote the train split's index; reading any rows in any order works."""
  index = tfrecords.read_index(prepared_config.data_dir, "train")
  records = [raw for path in index.files for raw in tfrecords.read_raw(path)]
  rows = np.random.default_rng(0).permutation(len(records))
  assert index.read(rows) == [records[r] for r in rows]
  np.testing.assert_array_equal(
    index.num_frames, [tfrecords.deserialize(r)["features"].shape[0] for r in records]
  )
  bad = dataclasses.replace(index, offset=index.offset + 1)
  with pytest.raises(ValueError, match="--stages=data"):
    bad.read(rows[:1])


def _copy_of_data(config, tmp_path):
  c = config.copy_and_resolve_references()
  c.data_dir = str(tmp_path / "data")
  shutil.copytree(config.data_dir, c.data_dir)
  return c


def test_a_data_folder_without_an_index_is_refused_naming_the_fix(prepared_config, tmp_path):
  """The data stage writes every split's index beside its shards; a folder without one (copied
  in part) is named with the command that rebuilds it, not read without a plan."""
  c = _copy_of_data(prepared_config, tmp_path)
  os.remove(layout.index_path(c.data_dir, "train"))
  with pytest.raises(
    tfrecords.MissingIndexError, match=r"train.index.npz does not exist.*--stages=data"
  ):
    input_pipeline.train_iterator(c, "train", 384)


def test_an_index_of_other_shards_is_refused_not_trusted(prepared_config, tmp_path):
  c = _copy_of_data(prepared_config, tmp_path)
  shard = layout.list_shards(c.data_dir, "train")[0]
  tfrecords.write_shard(shard, list(tfrecords.read_raw(shard))[:-1])  # One record fewer.
  fix = r"other shards than those now beside it.*train.summary.json.*--stages=data"
  with pytest.raises(tfrecords.MissingIndexError, match=fix):
    input_pipeline.record_index(c, "train")


def test_the_index_the_writers_noted_is_where_the_records_are(prepared_config):
  """The data stage writes each split's index from its writers' lengths, reading nothing back:
  every record is where it says, with its frames."""
  for split in layout.splits(prepared_config):
    index = tfrecords.read_index(prepared_config.data_dir, split)
    records = list(tfrecords.iterate_records(index.files))
    assert (
      len(records)
      == index.num_frames.size
      == layout.read_summary(prepared_config.data_dir, split)["written"]
    )
    read = [tfrecords.deserialize(raw) for raw in index.read(np.arange(len(records)))]
    assert [r["id"] for r in read] == [r["id"] for r in records]
    assert index.num_frames.tolist() == [len(r["features"]) for r in records]


def test_a_record_whose_data_fails_its_crc_is_refused_naming_the_shard_and_the_fix(
  prepared_config, tmp_path
):
  """A flipped byte inside a record's data (its header intact) is caught by every reader."""
  c = _copy_of_data(prepared_config, tmp_path)
  index = tfrecords.read_index(c.data_dir, "train")
  shard = index.files[index.shard[1]]
  with open(shard, "r+b") as f:
    f.seek(int(index.offset[1]) + 12 + int(index.length[1]) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  fix = f"{shard}: .*data does not match its CRC.*train.summary.json.*--stages=data"
  with pytest.raises(tfrecords.CorruptRecordError, match=fix):
    list(tfrecords.read_raw(shard))
  index.read(np.array([0, 2]))  # Its neighbours still read.
  with pytest.raises(tfrecords.CorruptRecordError, match=fix):
    index.read(np.array([0, 1]))


def _example_key(text: bytes, frames: np.ndarray) -> tuple[bytes, bytes]:
  """One example, told apart from others with the same transcript by its audio's features."""
  return text, np.asarray(frames, np.float32).tobytes()


def test_eval_batches_cover_each_example_once(prepared_config):
  """Across several buckets, each with a partial last batch: every record once, none twice (the
  transcripts repeat, so examples are matched by their features as well)."""
  c = with_buckets(prepared_config)
  records = tfrecords.iterate_records(layout.list_shards(c.data_dir, "test"))
  want = sorted(_example_key(r["text"].encode(), r["features"]) for r in records)
  got = []
  for b in input_pipeline.eval_batches(c, "test", 384, 8):
    assert b["features"].shape[0] == 8
    for row in np.flatnonzero(b["valid"]):
      got.append(_example_key(b["text"][row], b["features"][row, : b["num_frames"][row]]))
  assert len(set(want)) == len(want) == layout.read_summary(c.data_dir, "test")["written"]
  assert len({text for text, _ in want}) < len(want)  # Repeated transcripts: counting them fails.
  assert sorted(got) == want


def test_padding_efficiency_is_real_frames_over_padded_frames():
  batches = iter(
    [
      {"features": np.zeros((2, 10, 3)), "num_frames": np.array([10, 5])},
      {"features": np.zeros((2, 20, 3)), "num_frames": np.array([20, 10])},
      {"features": np.zeros((2, 10, 3)), "num_frames": np.array([8, 2])},
      {"features": np.zeros((2, 99, 3)), "num_frames": np.array([1, 1])},  # Beyond num_batches.
    ]
  )
  with mock.patch.object(input_pipeline, "train_iterator", return_value=batches):
    efficiency, lengths = input_pipeline.padding_efficiency(None, "train", 3)
  assert efficiency == (10 + 5 + 20 + 10 + 8 + 2) / (20 + 40 + 20)
  assert lengths == {10: 2, 20: 1}


def test_padding_efficiency_of_prepared_data(prepared_config):
  """One bucket: six batches of eight distinct utterances (of the 60 in the first epoch), all
  padded to its length, so the efficiency lies between that of the 48 shortest and longest."""
  c = prepared_config
  [length] = features.bucket_lengths(c)
  efficiency, lengths = input_pipeline.padding_efficiency(c, "train", 6)
  assert lengths == {length: 6}
  shards = layout.list_shards(c.data_dir, "train")
  frames = sorted(len(r["features"]) for r in tfrecords.iterate_records(shards))
  rows = 6 * c.input.batch_size
  assert len(frames) == 60 and frames[-1] <= length
  assert sum(frames[:rows]) / (rows * length) <= efficiency <= sum(frames[-rows:]) / (rows * length)
