"""The TFRecord example format: the one on-disk format training and evaluation read.

A record holds an utterance's features (so training never recomputes them),
transcript, CTC label ids, duration and analysis labels. The teacher embedding
of its transcript is not in it: transcripts repeat across records, so the data
stage stores each distinct one's embedding once (`layout.teacher_table_path`)
and the readers join it by transcript, and no shard is rewritten once the
teacher has run. `stalign.prepare` writes splits with `serialize`;
`stalign.input_pipeline` parses the same fields inside tf.data; `deserialize`
is the numpy reader for analysis. Where the shards live: `stalign.data.layout`.

Shards are read and written through `stalign.fs`, never by TensorFlow's own
file system (whose GCS client cannot be pointed at an emulator, so no test
could hold it to a `gs://` data folder): `read_raw` parses the TFRecord framing
(length, masked CRC32C of the length, data, masked CRC32C of the data) from
any file object, and `write_shard` writes with `tf.io.TFRecordWriter` to a
local file that becomes the shard in one rename or upload.

A split's `RecordIndex` (written by the data stage from what each shard's writer
noted, `save_index`: no shard is read back) holds where every record starts and
its number of frames. The training input plans an
epoch from the index alone and reads each record at its offset (`RecordIndex.read`),
so resuming at batch k reads nothing before it: TFRecord has no seek of its
own, but its framing (12-byte header, data, 4-byte CRC) is all a reader needs,
and with the index's lengths a record is one ranged read of exactly its bytes.
"""

from collections.abc import Iterable
from collections.abc import Iterator
import dataclasses
import io
import itertools
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
  # Map fields in key order: protobuf otherwise orders them by a per-process hash, and the same
  # split built by other processes (or again) would differ in bytes.
  example = tf.train.Example(features=tf.train.Features(feature=feats))
  return example.SerializeToString(deterministic=True)


def deserialize(raw: bytes) -> dict:
  """Inverse of `serialize`, in numpy; for analysis, not the hot path."""
  f = tf.train.Example.FromString(raw).features.feature
  num_frames = f["num_frames"].int64_list.value[0]
  return {
    "id": f["id"].bytes_list.value[0].decode(),
    "text": f["text"].bytes_list.value[0].decode(),
    "features": np.frombuffer(f["features"].bytes_list.value[0], np.float16).reshape(
      num_frames, -1
    ),
    "ctc_labels": np.array(f["ctc_labels"].int64_list.value, np.int32),
    "duration": f["duration"].float_list.value[0],
    "labels": json.loads(f["labels"].bytes_list.value[0]),
  }


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


def _record_length(header: bytes, path: str) -> int:
  """The data length a record's 12-byte header gives, once the header's own CRC matches.

  The length is trusted only then: a corrupt one could ask for any size.
  """
  if len(header) < _HEADER or _masked_crc(header[:8]) != struct.unpack_from("<I", header, 8)[0]:
    raise ValueError(
      f"{path}: truncated or corrupt TFRecord (a record header's CRC does not match); "
      + _rebuild_hint(path)
    )
  return struct.unpack_from("<Q", header)[0]


def _checked_data(data: bytes, footer: bytes, path: str) -> bytes:
  """`data`, once the CRC in the 4-byte `footer` after it matches."""
  if len(footer) < 4 or _masked_crc(data) != struct.unpack("<I", footer)[0]:
    raise CorruptRecordError(
      f"{path}: truncated or corrupt TFRecord (a record's data does not match its CRC); "
      + _rebuild_hint(path)
    )
  return data


def _read_framed(f: IO[bytes], path: str) -> bytes | None:
  """The record at `f`'s position, checked against its CRCs; None at the end of the file."""
  header = f.read(_HEADER)
  if not header:
    return None
  data = f.read(_record_length(header, path))
  return _checked_data(data, f.read(4), path)


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
      length = int(self.length[row])
      try:
        fits = _record_length(raw, path) == length and len(raw) == length + _FRAMING
      except ValueError:
        fits = False
      if not fits:
        raise ValueError(
          f"{path} has no record of {length} bytes at offset {self.offset[row]}: the "
          f"shards changed after {self.path} was written; rebuild it with "
          f"`{layout.PREPARE_COMMAND}`"
        )
      # The record is where the index says: a CRC mismatch now means it is damaged, and the
      # shard needs rebuilding (CorruptRecordError).
      out.append(_checked_data(raw[_HEADER : _HEADER + length], raw[_HEADER + length :], path))
    return out


def offsets(lengths: list[int]) -> list[int]:
  """Where each record of a shard starts, given its records' lengths (`write_shard`), and last
  the shard's size."""
  return [0, *itertools.accumulate(length + _FRAMING for length in lengths)]


def save_index(
  data_dir: str, split: str, files: list[str], columns: dict[str, list], shard_bytes: list[int]
) -> RecordIndex:
  """Writes the split's index from what its shards' writers noted (no record is read back).

  Args:
    data_dir: the data folder.
    split: the split.
    files: its shards, in `layout.list_shards` order.
    columns: `shard`, `offset`, `length`, `num_frames` of every record, shard by shard.
    shard_bytes: each shard's size, so an index that no longer matches its shards is noticed
      before any read.
  """
  dtypes = {"shard": np.int32, "offset": np.int64, "length": np.int64, "num_frames": np.int32}
  arrays = {name: np.array(columns[name], dtype) for name, dtype in dtypes.items()}
  path = layout.index_path(data_dir, split)
  with fs.atomic_write(path, "wb") as f:
    np.savez(
      f,
      version=INDEX_VERSION,
      shards=np.array([os.path.basename(p) for p in files]),
      shard_bytes=np.array(shard_bytes, np.int64),
      **arrays,
    )
  return RecordIndex(path, tuple(files), **arrays)


def read_index(data_dir: str, split: str) -> RecordIndex:
  """The split's index, or a `MissingIndexError` if it is absent or its shards have changed."""
  path = layout.index_path(data_dir, split)
  if not fs.exists(path):
    raise MissingIndexError(
      f"{path} does not exist; rebuild the split with `{layout.PREPARE_COMMAND}`"
    )
  stored = np.load(io.BytesIO(fs.read_bytes(path)))
  if int(stored["version"]) != INDEX_VERSION:
    raise MissingIndexError(f"{path} is version {int(stored['version'])}, not {INDEX_VERSION}")
  files = layout.list_shards(data_dir, split)
  if list(stored["shards"]) != [os.path.basename(p) for p in files] or list(
    stored["shard_bytes"]
  ) != [fs.size(p) for p in files]:
    raise MissingIndexError(
      f"{path} was written for other shards than those now beside it; "
      + _rebuild_hint(files[0] if files else path)
    )
  columns = ("shard", "offset", "length", "num_frames")
  return RecordIndex(path, tuple(files), **{name: stored[name] for name in columns})


def write_shard(path: str, records: Iterable[bytes]) -> list[int]:
  """Writes serialized records as the shard `path`, which appears only once complete.

  Returns each record's length, from which its offset follows (`offsets`): the split's
  index is made of these, without reading the shard back.
  """
  lengths = []
  with fs.staged(path) as local, tf.io.TFRecordWriter(local) as writer:
    for raw in records:
      writer.write(raw)
      lengths.append(len(raw))
  return lengths
