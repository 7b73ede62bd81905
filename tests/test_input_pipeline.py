from unittest import mock

import numpy as np

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


def test_two_processes_read_disjoint_shards_covering_everything(prepared_config):
  files = layout.list_shards(prepared_config.data_dir, "train")
  seen = []
  for index in range(2):
    with (
      mock.patch("jax.process_count", return_value=2),
      mock.patch("jax.process_index", return_value=index),
    ):
      mine = input_pipeline.local_files(files)
      seen += [r["id"] for r in tfrecords.iterate_records(mine)]
  all_ids = [r["id"] for r in tfrecords.iterate_records(files)]
  assert sorted(seen) == sorted(all_ids) and len(set(seen)) == len(seen)


def test_eval_batches_cover_each_example_once(prepared_config):
  """Across several buckets, each with a partial last batch."""
  c = with_buckets(prepared_config)
  n = layout.read_summary(c.data_dir, "test")["written"]
  texts = []
  for b in input_pipeline.eval_batches(c, "test", 384, 8):
    assert b["features"].shape[0] == 8
    texts += list(b["text"][b["valid"]])
  assert len(texts) == n


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
  efficiency, lengths = input_pipeline.padding_efficiency(prepared_config, "train", 6)
  assert 0.3 < efficiency < 1
  assert sum(lengths.values()) == 6 and set(lengths) <= set(
    features.bucket_lengths(prepared_config)
  )
