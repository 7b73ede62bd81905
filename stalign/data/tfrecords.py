"""Sharded TFRecord files: the one on-disk format training and evaluation read.

A split is written once from any source (synthetic corpus, user manifest, FSDD,
TFDS). Log-mel features are stored so training never recomputes them, with
the transcript, CTC label ids and the analysis labels; the teacher embedding is
added later by `stalign.precompute`. Shards are written under a temporary name
and renamed when complete, and a split counts as written only once its
`{split}.summary.json` exists, so a killed job never leaves a half-written
dataset that looks finished.
"""
import collections
import glob
import json
import os
from collections.abc import Iterable, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tqdm

from stalign.data import audio
from stalign.data import features
from stalign.data import text as text_lib


def shard_pattern(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, "tfrecords", f"{split}-*-of-*.tfrecord")


def summary_path(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, "tfrecords", f"{split}.summary.json")


def list_shards(data_dir: str, split: str) -> list[str]:
  """Shards of a finished split, or a FileNotFoundError that says how to make them."""
  files = sorted(glob.glob(shard_pattern(data_dir, split)))
  if not files or not os.path.exists(summary_path(data_dir, split)):
    raise FileNotFoundError(
        f"no finished TFRecords for split {split!r} under {data_dir}/tfrecords; "
        "run `python -m stalign.main --config=... --workdir=...` (it writes them) first")
  return files


def read_summary(data_dir: str, split: str) -> dict:
  with open(summary_path(data_dir, split)) as f:
    return json.load(f)


def ctc_alignable(labels: np.ndarray, output_frames: int) -> bool:
  """CTC needs a frame per label plus a blank between each repeated pair.

  Only counted here, for the summary: the loss checks it again in the step,
  so the stored data does not depend on the model's frame rate.
  """
  repeats = int(np.sum(labels[1:] == labels[:-1])) if len(labels) > 1 else 0
  return output_frames >= len(labels) + repeats


def _bytes(v: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _ints(v) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))


def _floats(v) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=list(v)))


def serialize(record: dict) -> bytes:
  """One example -> tf.train.Example bytes (the schema `input_pipeline.parse` reads)."""
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
      "features": np.frombuffer(f["features"].bytes_list.value[0], np.float16).reshape(num_frames, -1),
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


def _featurize(examples: Iterable[dict], config: ml_collections.ConfigDict,
               skipped: collections.Counter, skip_examples: dict) -> Iterator[dict]:
  """Loads and checks audio, computes log-mel and CTC targets; skips bad input with a reason."""
  fcfg = config.features
  _, hop = features.frame_params(fcfg)
  # Pad waveforms to whole seconds so the jitted front end compiles a bounded number of shapes.
  logmel = jax.jit(lambda w: features.log_mel(w, fcfg))
  for ex in examples:
    name = ex.get("audio_filepath") or ex["id"]
    try:
      if "waveform" in ex:
        wave = audio.check_waveform(np.asarray(ex["waveform"], np.float32), ex["sample_rate"],
                                    fcfg.sample_rate, fcfg.max_seconds, name)
      else:
        wave = audio.load_audio(ex["audio_filepath"], fcfg.sample_rate, fcfg.max_seconds)
      labels = text_lib.encode_targets(ex["text"], config.features.ctc_targets)
    except (audio.AudioError, text_lib.TranscriptError) as e:
      reason = type(e).__name__ + ": " + str(e).split(": ", 1)[-1].split(";")[0]
      skipped[reason] += 1
      skip_examples.setdefault(reason, name)
      logging.warning("skipping %s", e)
      continue
    padded_len = -(-wave.size // fcfg.sample_rate) * fcfg.sample_rate
    frames = features.num_frames(wave.size, hop)
    feats = np.asarray(logmel(np.pad(wave, (0, padded_len - wave.size))))[:frames]
    yield {
        "id": ex["id"],
        "text": text_lib.normalize(ex["text"]),
        "features": feats,
        "ctc_labels": labels,
        "duration": wave.size / fcfg.sample_rate,
        "labels": ex.get("labels", {}),
    }


def write_split(examples: Iterable[dict], config: ml_collections.ConfigDict, split: str,
                num_shards: int, total: int | None = None) -> dict:
  """Writes a split atomically and returns (and stores) its summary of what went in and out."""
  out_dir = os.path.join(config.data_dir, "tfrecords")
  os.makedirs(out_dir, exist_ok=True)
  for stale in glob.glob(os.path.join(out_dir, f"{split}-*")):
    os.remove(stale)  # Leftovers of a killed write: the split is rewritten whole.
  names = [os.path.join(out_dir, f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord")
           for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(n + ".tmp") for n in names]
  skipped, skip_examples = collections.Counter(), {}
  written = unalignable = 0
  seconds = 0.0
  sub = config.model.subsample
  stream = tqdm.tqdm(examples, total=total, desc=f"tfrecords/{split}", unit="utt", mininterval=2)
  for record in _featurize(stream, config, skipped, skip_examples):
    writers[written % num_shards].write(serialize(record))
    written += 1
    output_frames = record["features"].shape[0] // sub * config.model.ctc_upsample
    unalignable += not ctc_alignable(record["ctc_labels"], output_frames)
    seconds += record["duration"]
  for w in writers:
    w.close()
  for n in names:
    os.replace(n + ".tmp", n)
  summary = {
      "split": split,
      "read": written + sum(skipped.values()),
      "written": written,
      "skipped": dict(skipped),
      "skipped_example": skip_examples,
      "ctc_unalignable": unalignable,
      "hours": seconds / 3600,
      "shards": num_shards,
      "ctc_targets": config.features.ctc_targets,
  }
  with open(summary_path(config.data_dir, split) + ".tmp", "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(summary_path(config.data_dir, split) + ".tmp", summary_path(config.data_dir, split))
  logging.info("split %s: %d read, %d written, skipped %s, %d not CTC-alignable",
               split, summary["read"], written, dict(skipped) or "none", unalignable)
  return summary
