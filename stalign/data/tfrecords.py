"""The TFRecord example format: the one on-disk format training and evaluation read.

A record holds an utterance's log-mel features (so training never recomputes
them), transcript, CTC label ids, duration and analysis labels, and, once
`stalign.precompute` has run, the teacher embedding of its transcript.
`stalign.prepare` writes splits with `serialize`; `stalign.input_pipeline`
parses the same fields inside tf.data; `deserialize` is the numpy reader for
precompute and analysis. Where the shards live: `stalign.data.layout`.

Shards are read and written through `stalign.fs`, never by TensorFlow's own
file system (whose GCS client cannot be pointed at an emulator, so no test
could hold it to a `gs://` data folder): `read_raw` parses the TFRecord framing
(length, masked CRC32C of the length, data, masked CRC32C of the data) from
any file object, and `write_shard` writes with `tf.io.TFRecordWriter` to a
local file that becomes the shard in one rename or upload.
"""

from collections.abc import Iterable
from collections.abc import Iterator
import json
import struct

import google_crc32c
import numpy as np
import tensorflow as tf

from stalign import fs


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
    for raw in read_raw(path):
      yield deserialize(raw)


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_raw(path: str) -> Iterator[bytes]:
  """The serialized records of one shard, in order, each checked against its CRC."""
  with fs.open(path, "rb") as f:
    while header := f.read(12):
      data = f.read(struct.unpack("<Q", header[:8])[0]) if len(header) == 12 else b""
      footer = f.read(4)
      if (
        len(header) < 12
        or len(footer) < 4
        or _masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]
        or _masked_crc(data) != struct.unpack("<I", footer)[0]
      ):
        raise ValueError(f"{path}: truncated or corrupt TFRecord; rebuild it with the data stage")
      yield data


def write_shard(path: str, records: Iterable[bytes]) -> int:
  """Writes serialized records as the shard `path`, which appears only once complete."""
  count = 0
  with fs.staged(path) as local, tf.io.TFRecordWriter(local) as writer:
    for raw in records:
      writer.write(raw)
      count += 1
  return count
