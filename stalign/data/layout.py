"""Where a data folder keeps each thing, and the reads that need no TensorFlow.

  DATA_DIR/corpus/                          the synthetic corpus (stalign.data.corpus; for a
                                            gs:// DATA_DIR a local cache, sources.corpus_dir)
  DATA_DIR/tfrecords/{split}-i-of-n.tfrecord shards of a split (stalign.data.tfrecords)
  DATA_DIR/tfrecords/{split}-i-of-n.json    written after its shard: the shard is finished; what
                                            went in, its records' offsets and frames, its texts
  DATA_DIR/tfrecords/{split}.summary.json   written last: a split without it is unfinished
  DATA_DIR/tfrecords/{split}.index.npz      where each record of the split's shards starts, and
                                            its frames (stalign.data.tfrecords.RecordIndex)
  DATA_DIR/tfrecords/teacher_table.npz      the teacher embedding of every distinct transcript
  DATA_DIR/tfrecords/teacher_stats.npz      teacher width and mean embedding (stalign.precompute)
  DATA_DIR/teacher_cache/                   finished chunks of teacher embeddings

DATA_DIR may be a local folder or a `gs://` URL: every read goes through
`stalign.fs`. Inference reads only the teacher statistics, so it imports this module and not
the TFRecord reader or writer. Each split's summary also lists the speakers it
holds (`speakers`, from the `speaker` label), which is how evaluation tells the
voices a run was trained on from unseen ones, and the config values its records were
built with (`built_with`), which every later stage checks against its own config.
"""

import io
import json
import os

import ml_collections
import numpy as np

from stalign import added_keys
from stalign import data
from stalign import fs

# The command that builds (or rebuilds) every split and the teacher statistics.
PREPARE_COMMAND = "python -m stalign.main --config=CONFIG --workdir=RUN --stages=data"
# What a split's summary calls the layout its records follow. 2: teacher embeddings in one table
# beside the shards (`teacher_table_path`), not inside every record; every shard has its marker.
DATA_FORMAT = 2


def splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Splits a config's data folder holds; the synthetic corpus adds its zero-shot split (intents
  unseen in training), `data.real_sources` the real speech of their held-out speakers
  (`data.real_split`)."""
  extra = (data.ZERO_SHOT_SPLIT,) if config.data.source == "synthetic" else ()
  if config.data.real_sources:
    extra += (data.real_split(config.eval.split),)
  return tuple(dict.fromkeys(data.SPLITS + (config.eval.split,) + extra))


def tfrecords_dir(data_dir: str) -> str:
  return os.path.join(data_dir, "tfrecords")


def shard_path(data_dir: str, split: str, index: int, num_shards: int) -> str:
  return os.path.join(tfrecords_dir(data_dir), f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def shard_marker_path(data_dir: str, split: str, index: int, num_shards: int) -> str:
  return shard_path(data_dir, split, index, num_shards).removesuffix(".tfrecord") + ".json"


def summary_path(data_dir: str, split: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), f"{split}.summary.json")


def index_path(data_dir: str, split: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), f"{split}.index.npz")


def teacher_stats_path(data_dir: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), "teacher_stats.npz")


def teacher_table_path(data_dir: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), "teacher_table.npz")


def text_bank_path(data_dir: str) -> str:
  return os.path.join(tfrecords_dir(data_dir), "train_text_bank.npy")


def teacher_cache_dir(data_dir: str) -> str:
  return os.path.join(data_dir, "teacher_cache")


def _unfinished(data_dir: str, split: str) -> FileNotFoundError:
  return FileNotFoundError(
    f"no finished TFRecords for split {split!r} under {tfrecords_dir(data_dir)}; build them "
    f"with `{PREPARE_COMMAND}` (a data folder from an older stalign may lack this split)"
  )


def list_shards(data_dir: str, split: str) -> list[str]:
  """Shards of a finished split, or a FileNotFoundError that says how to make them."""
  files = fs.glob(tfrecords_dir(data_dir), f"{split}-*-of-*.tfrecord")
  if not files or not fs.exists(summary_path(data_dir, split)):
    raise _unfinished(data_dir, split)
  return files


def read_summary(data_dir: str, split: str) -> dict:
  """A finished split's summary, or a FileNotFoundError that says how to make it."""
  if not fs.exists(summary_path(data_dir, split)):
    raise _unfinished(data_dir, split)
  return json.loads(fs.read_text(summary_path(data_dir, split)))


def read_shard_markers(data_dir: str, split: str) -> list[dict]:
  """The markers of a finished split's shards, in shard order."""
  num_shards = read_summary(data_dir, split)["shards"]
  return [
    json.loads(fs.read_text(shard_marker_path(data_dir, split, i, num_shards)))
    for i in range(num_shards)
  ]


def split_texts(data_dir: str, split: str) -> set[str]:
  """The distinct transcripts a finished split holds, from its shards' markers (no record read)."""
  return set().union(*(marker["texts"] for marker in read_shard_markers(data_dir, split)))


def read_teacher_table(data_dir: str, embeddings: bool = True) -> tuple[np.ndarray, ...]:
  """(distinct transcripts, sorted [texts] str; their teacher embeddings, [texts, dim] float32).

  `embeddings=False` gives the transcripts alone, reading only their part of the file (at 960
  hours the embeddings are some 430 MB that a check of which transcripts are done need not read).
  """
  path = teacher_table_path(data_dir)
  if not fs.exists(path):
    raise FileNotFoundError(
      f"{path} not found: the teacher's embeddings are written by `{PREPARE_COMMAND}`"
    )
  keys = ("texts", "embeddings") if embeddings else ("texts",)
  with fs.open(path, "rb") as f, np.load(f) as table:  # An .npz reads each array on demand.
    return tuple(table[k] for k in keys)


# Feature settings the stored log-mels and CTC labels are computed with.
_FEATURE_KEYS = (
  "sample_rate",
  "num_mels",
  "win_ms",
  "hop_ms",
  "remove_dc",
  "ctc_targets",
  "frontend",
)
# What the stored frames also depend on with the Whisper front end (a log-mel folder does not).
_WHISPER_KEYS = ("whisper_weights", "whisper_layers", "whisper_min_seconds")
# The real-speech splits (`data.real_split`) and the split of held-out speakers each holds.
_REAL_SPLITS = {data.real_split(split): split for split in ("valid", "test")}


def _sources(config: ml_collections.ConfigDict, split: str) -> tuple[str, ...]:
  """The sources whose examples `split` holds."""
  if split in _REAL_SPLITS:
    return tuple(config.data.real_sources)
  if split == "train":
    return (config.data.source, *config.data.train_extra)
  return (config.data.source,)


def built_with(config: ml_collections.ConfigDict, split: str) -> dict:
  """Config values a split's records depend on, by key: its features and where examples came from.

  The split's summary records them (`built_with_record`) when it is written, and
  `check_built_with` compares them with the config of every later stage: a folder built for
  other settings would otherwise be trained on with the wrong feature width or labels, or
  without the recordings a user has just added to `data.train_extra`. A split holding a real
  source (`data.REAL_SOURCES`) depends on the held-out speakers too, and on that source's folder.
  """
  keys = _FEATURE_KEYS + (_WHISPER_KEYS if config.features.frontend == "whisper" else ())
  built = {f"features.{key}": config.features[key] for key in keys}
  built["data.source"] = config.data.source
  if split == "train":
    built["data.train_extra"] = tuple(config.data.train_extra)
    built["data.train_extra_speeds"] = tuple(config.data.train_extra_speeds)
    built["data.narrowband_copies"] = tuple(config.data.narrowband_copies)
  sources = _sources(config, split)
  if split in _REAL_SPLITS:
    built["data.real_sources"] = sources
  if set(sources) & set(data.REAL_SOURCES):
    # Train holds every speaker not held out; valid and test (real or not) their own held-out ones.
    held = ("valid", "test") if split == "train" else (_REAL_SPLITS.get(split, split),)
    built["data.real_held_out"] = {s: tuple(config.data.real_held_out[s]) for s in held}
  if "librispeech" in sources:
    built["data.librispeech_dir"] = config.data.librispeech_dir
  if "an4" in sources:
    built["data.an4_manifest"] = config.data.an4_manifest
  return built


def _summary_field(key: str) -> str:
  return key.split(".")[-1]


def _to_json(value):
  """Tuples as JSON lists, in dicts too."""
  if isinstance(value, dict):
    return {k: _to_json(v) for k, v in value.items()}
  return list(value) if isinstance(value, tuple) else value


def _from_json(value):
  """JSON lists as the tuples they were written from, in dicts too."""
  if isinstance(value, dict):
    return {k: _from_json(v) for k, v in value.items()}
  return tuple(value) if isinstance(value, list) else value


def built_with_record(config: ml_collections.ConfigDict, split: str) -> dict:
  """`built_with` as the split's summary holds it: each key's last part, tuples as JSON lists."""
  return {_summary_field(key): _to_json(value) for key, value in built_with(config, split).items()}


def check_built_with(config: ml_collections.ConfigDict, split: str, summary: dict) -> None:
  """ValueError naming the first setting the written split was built with other than `config`."""
  if summary.get("format", 1) != DATA_FORMAT:
    raise ValueError(
      f"{summary_path(config.data_dir, split)} is data format {summary.get('format', 1)}, "
      f"written by an older stalign (teacher embeddings inside every record); this one reads "
      f"format {DATA_FORMAT}: delete {tfrecords_dir(config.data_dir)} and rerun "
      f"`{PREPARE_COMMAND}` (the synthetic corpus and the teacher cache are reused)"
    )
  for key, value in built_with(config, split).items():
    field = _summary_field(key)
    # JSON lists tuples; a folder written before the setting existed was built with its old value.
    stored = _from_json(summary[field]) if field in summary else added_keys.ADDED_KEYS[key]
    if stored != value:
      raise ValueError(
        f"{config.data_dir} was built with {key}={stored!r} but the config asks for "
        f"{value!r}; point --config.data_dir at a new folder, or drop the override (a folder "
        "built by an older stalign: delete it and rerun to rebuild it with today's settings)"
      )


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
