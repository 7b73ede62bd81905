"""Where a data folder keeps each thing, and the reads that need no TensorFlow.

  DATA_DIR/corpus/                          the synthetic corpus (stalign.data.corpus; for a
                                            gs:// DATA_DIR a local cache, sources.corpus_dir)
  DATA_DIR/tfrecords/{split}-i-of-n.tfrecord shards of a split (stalign.data.tfrecords)
  DATA_DIR/tfrecords/{split}.summary.json   written last: a split without it is unfinished
  DATA_DIR/tfrecords/{split}.index.npz      where each record of the split's shards starts, and
                                            its frames (stalign.data.tfrecords.RecordIndex)
  DATA_DIR/tfrecords/teacher_stats.npz      teacher width and mean embedding (stalign.precompute)
  DATA_DIR/teacher_cache/                   finished chunks of teacher embeddings

DATA_DIR may be a local folder or a `gs://` URL: every read goes through
`stalign.fs`. Inference reads only the teacher statistics, so it imports this module and not
the TFRecord reader or writer. Each split's summary also lists the speakers it
holds (`speakers`, from the `speaker` label), which is how evaluation tells the
voices a run was trained on from unseen ones.
"""

import io
import json
import os

import numpy as np

from stalign import fs

# The command that builds (or rebuilds) every split and the teacher statistics.
PREPARE_COMMAND = "python -m stalign.main --config=CONFIG --workdir=RUN --stages=data"


def tfrecords_dir(data_dir: str) -> str:
  return os.path.join(data_dir, "tfrecords")


def shard_path(data_dir: str, split: str, index: int, num_shards: int) -> str:
  return os.path.join(tfrecords_dir(data_dir), f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def summary_path(data_dir: str, split: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), f"{split}.summary.json")


def index_path(data_dir: str, split: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), f"{split}.index.npz")


def teacher_stats_path(data_dir: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), "teacher_stats.npz")


def text_bank_path(data_dir: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), "train_text_bank.npy")


def teacher_cache_dir(data_dir: str) -> str:
  return os.path.join(data_dir, "teacher_cache")


def list_shards(data_dir: str, split: str) -> list[str]:
  """Shards of a finished split, or a FileNotFoundError that says how to make them."""
  files = fs.glob(tfrecords_dir(data_dir), f"{split}-*-of-*.tfrecord")
  if not files or not fs.exists(summary_path(data_dir, split)):
    raise FileNotFoundError(
      f"no finished TFRecords for split {split!r} under {tfrecords_dir(data_dir)}; build them "
      f"with `{PREPARE_COMMAND}` (a data folder from an older stalign may lack this split)"
    )
  return files


def read_summary(data_dir: str, split: str) -> dict:
  return json.loads(fs.read_text(summary_path(data_dir, split)))


def read_teacher_stats(data_dir: str) -> tuple[int, np.ndarray]:
  """(teacher width, mean teacher embedding of the distinct training transcripts)."""
  path = teacher_stats_path(data_dir)
  if not fs.exists(path):
    raise FileNotFoundError(
      f"{path} not found: the teacher statistics are written by `{PREPARE_COMMAND}`"
    )
  return read_teacher_stats_file(path)


def read_text_bank(data_dir: str) -> np.ndarray:
  """Teacher embeddings of every distinct training transcript, [transcripts, dim]."""
  path = text_bank_path(data_dir)
  if not fs.exists(path):
    raise FileNotFoundError(
      f"{path} not found: it is written by `{PREPARE_COMMAND}` (a data folder made before "
      "loss.bank_weight existed gets it by rerunning that; the teacher cache is reused)"
    )
  return np.load(io.BytesIO(fs.read_bytes(path)))


def read_teacher_stats_file(path: str) -> tuple[int, np.ndarray]:
  """`read_teacher_stats` of a copy of the file (an export carries one)."""
  stats = np.load(io.BytesIO(fs.read_bytes(path)))
  return int(stats["dim"]), stats["mean"]
