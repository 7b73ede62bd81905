"""The TFRecord example format: the one on-disk format training and evaluation read.

A record holds an utterance's log-mel features (so training never recomputes
them), transcript, CTC label ids, duration and analysis labels, and, once
`stalign.precompute` has run, the teacher embedding of its transcript.
`stalign.prepare` writes splits with `serialize`; `stalign.input_pipeline`
parses the same fields inside tf.data; `deserialize` is the numpy reader for
precompute and analysis. Where the shards live: `stalign.data.layout`.
"""

from collections.abc import Iterable
from collections.abc import Iterator
import json

import numpy as np
import tensorflow as tf


def _bytes(v: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _ints(v) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))


def _floats(v) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=list(v)))


def serialize(record: dict) -> bytes:
  """One example -> tf.train.Example bytes (the fields `input_pipeline` parses)."""
  feats = {
    "id": _bytes(record["id"].encode()),
    "text": _bytes(record["text"].encode()),
    "features": _bytes(record["features"].astype(np.float16).tobytes()),
    "num_frames": _ints([record["features"].shape[0]]),
    "ctc_labels": _ints(record["ctc_labels"]),
    "duration": _floats([record["duration"]]),
    "labels": _bytes(json.dumps(record["labels"], sort_keys=True).encode()),
  }
  if record.get("teacher_embedding") is not None:
    feats["teacher_embedding"] = _floats(record["teacher_embedding"])
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def deserialize(raw: bytes) -> dict:
  """Inverse of `serialize`, in numpy; for precompute and analysis, not the hot path."""
  f = tf.train.Example.FromString(raw).features.feature
  num_frames = f["num_frames"].int64_list.value[0]
  record = {
    "id": f["id"].bytes_list.value[0].decode(),
    "text": f["text"].bytes_list.value[0].decode(),
    "features": np.frombuffer(f["features"].bytes_list.value[0], np.float16).reshape(
      num_frames, -1
    ),
    "ctc_labels": np.array(f["ctc_labels"].int64_list.value, np.int32),
    "duration": f["duration"].float_list.value[0],
    "labels": json.loads(f["labels"].bytes_list.value[0]),
    "teacher_embedding": None,
  }
  if "teacher_embedding" in f:
    record["teacher_embedding"] = np.array(f["teacher_embedding"].float_list.value, np.float32)
  return record


def iterate_records(files: Iterable[str]) -> Iterator[dict]:
  for path in files:
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      yield deserialize(raw)
