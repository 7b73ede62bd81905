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

A split's `RecordIndex` (written by the data stage, `write_index`) holds where
every record starts and its number of frames. The training input plans an
epoch from the index alone and reads each record at its offset (`RecordIndex.read`),
so resuming at batch k reads nothing before it: TFRecord has no seek of its
own, but its framing (12-byte header, data, 4-byte CRC) is all a reader needs,
and with the index's lengths a record is one ranged read of exactly its bytes.
"""

from collections.abc import Iterable
from collections.abc import Iterator
import dataclasses
import io
import json
import os
import struct
from typing import IO

import google_crc32c
import numpy as np
import tensorflow as tf

from stalign import fs
from stalign.data import layout

# Bumped whenever the index file changes meaning; an index of another version is rebuilt.
INDEX_VERSION = 1
# A record's framing: length and its CRC before the data, the data's CRC after.
_HEADER = 12
_FRAMING = _HEADER + 4


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


def read_text(raw: bytes) -> str:
  """An example's transcript alone: parsing no other field, for reading every transcript fast."""
  return tf.train.Example.FromString(raw).features.feature["text"].bytes_list.value[0].decode()


def iterate_records(files: Iterable[str]) -> Iterator[dict]:
  for path in files:
    for raw in read_raw(path):
      yield deserialize(raw)


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class CorruptRecordError(ValueError):
  """A record whose framing is intact but whose data does not match its CRC."""


def _rebuild_hint(path: str) -> str:
  # The data stage keeps a split whose summary exists, so the summary goes first.
  split = os.path.basename(path).split("-")[0]
  return (
    f"delete {split}.summary.json beside it and rebuild the split with `{layout.PREPARE_COMMAND}`"
  )


def _read_framed(f: IO[bytes], path: str) -> bytes | None:
  """The record at `f`'s position, checked against its CRCs; None at the end of the file."""
  header = f.read(_HEADER)
  if not header:
    return None
  # The length is trusted only once its CRC matches: a corrupt one could ask for any size.
  if len(header) < _HEADER or _masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
    raise ValueError(
      f"{path}: truncated or corrupt TFRecord (a record header's CRC does not match); "
      + _rebuild_hint(path)
    )
  data = f.read(struct.unpack("<Q", header[:8])[0])
  footer = f.read(4)
  if len(footer) < 4 or _masked_crc(data) != struct.unpack("<I", footer)[0]:
    raise CorruptRecordError(
      f"{path}: truncated or corrupt TFRecord (a record's data does not match its CRC); "
      + _rebuild_hint(path)
    )
  return data


def read_raw(path: str) -> Iterator[bytes]:
  """The serialized records of one shard, in order, each checked against its CRC."""
  with fs.open(path, "rb") as f:
    while (data := _read_framed(f, path)) is not None:
      yield data


class MissingIndexError(FileNotFoundError):
  """A split has no record index, or one that no longer matches its shards."""


@dataclasses.dataclass(frozen=True)
class RecordIndex:
  """Where each record of a split is, and its length in frames: an epoch plan needs nothing else.

  Records are numbered shard by shard (in `layout.list_shards` order), each shard front to back.
  """

  path: str  # The index file (named in errors).
  files: tuple[str, ...]  # The split's shards.
  shard: np.ndarray  # [records] int32: which of `files` holds the record.
  offset: np.ndarray  # [records] int64: byte offset of its 12-byte header.
  length: np.ndarray  # [records] int64: bytes of its serialized example.
  num_frames: np.ndarray  # [records] int32: its feature frames, which choose its length bucket.

  def read(self, rows: np.ndarray) -> list[bytes]:
    """The serialized records numbered `rows`, in that order, each checked against its CRCs.

    One ranged read per record of exactly its framed bytes (`fs.read_ranges`),
    so reading a batch from a bucket fetches that batch and no more.
    """
    shards = [self.files[s] for s in self.shard[rows]]
    framed = fs.read_ranges(
      [
        (path, int(offset), int(length) + _FRAMING)
        for path, offset, length in zip(shards, self.offset[rows], self.length[rows])
      ]
    )
    out = []
    for path, raw, row in zip(shards, framed, rows):
      try:
        data = _read_framed(io.BytesIO(raw), path)
      except CorruptRecordError:
        raise  # The record is where the index says, but damaged: the shard needs rebuilding.
      except ValueError:
        data = None
      if data is None or len(data) != self.length[row]:
        raise ValueError(
          f"{path} has no record of {self.length[row]} bytes at offset {self.offset[row]}: the "
          f"shards changed after {self.path} was written; rebuild it with "
          f"`{layout.PREPARE_COMMAND}`"
        )
      out.append(data)
    return out


def _num_frames(raw: bytes) -> int:
  return tf.train.Example.FromString(raw).features.feature["num_frames"].int64_list.value[0]


def write_index(data_dir: str, split: str) -> RecordIndex:
  """Indexes a finished split (one pass over its records) and writes the index beside it.

  Run after anything that rewrites the shards (`stalign.precompute` adds the
  teacher embeddings), since offsets move. Each shard's size is stored too, so
  an index that no longer matches its shards is noticed before any read.
  """
  files = layout.list_shards(data_dir, split)
  columns = {"shard": [], "offset": [], "length": [], "num_frames": []}
  sizes = []
  for shard, path in enumerate(files):
    with fs.open(path, "rb") as f:
      while True:
        offset = f.tell()
        raw = _read_framed(f, path)
        if raw is None:
          break
        for name, value in zip(columns, (shard, offset, len(raw), _num_frames(raw))):
          columns[name].append(value)
      sizes.append(offset)
  dtypes = {"shard": np.int32, "offset": np.int64, "length": np.int64, "num_frames": np.int32}
  arrays = {name: np.array(values, dtypes[name]) for name, values in columns.items()}
  path = layout.index_path(data_dir, split)
  with fs.atomic_write(path, "wb") as f:
    np.savez(
      f,
      version=INDEX_VERSION,
      shards=np.array([os.path.basename(p) for p in files]),
      shard_bytes=np.array(sizes, np.int64),
      **arrays,
    )
  return RecordIndex(path, tuple(files), **arrays)


def read_index(data_dir: str, split: str) -> RecordIndex:
  """The split's index, or a `MissingIndexError` if it is absent or its shards have changed."""
  path = layout.index_path(data_dir, split)
  if not fs.exists(path):
    raise MissingIndexError(f"{path} does not exist")
  stored = np.load(io.BytesIO(fs.read_bytes(path)))
  if int(stored["version"]) != INDEX_VERSION:
    raise MissingIndexError(f"{path} is version {int(stored['version'])}, not {INDEX_VERSION}")
  files = layout.list_shards(data_dir, split)
  if list(stored["shards"]) != [os.path.basename(p) for p in files] or list(
    stored["shard_bytes"]
  ) != [fs.size(p) for p in files]:
    raise MissingIndexError(f"{path} was written for other shards than those now beside it")
  columns = ("shard", "offset", "length", "num_frames")
  return RecordIndex(path, tuple(files), **{name: stored[name] for name in columns})


def write_shard(path: str, records: Iterable[bytes]) -> int:
  """Writes serialized records as the shard `path`, which appears only once complete."""
  count = 0
  with fs.staged(path) as local, tf.io.TFRecordWriter(local) as writer:
    for raw in records:
      writer.write(raw)
      count += 1
  return count
