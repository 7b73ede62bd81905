"""Data preparation: every split the run needs, as TFRecords with teacher embeddings.

The `data` stage of `stalign.main`. A split is written once from any source
(synthetic corpus, user manifest, FSDD, LibriSpeech, AN4, TFDS): audio is checked and turned into
features (log-mel, or frozen Whisper frames) by the front end inference uses, bad input is skipped
with a counted reason, and `stalign.precompute` then adds the teacher
embeddings. Shards appear only when complete (a rename, or one upload to an
object store: `stalign.fs`), and a split counts as written only once its `{split}.summary.json`
exists, so a killed job never leaves a half-written split that looks finished.
Evaluators only read: every split they use is built here. With several
processes, process 0 writes the splits while the others wait at a barrier
(no shared POSIX disk is assumed: the data folder may be a `gs://` URL), then
all of them share the teacher embeddings (`stalign.precompute`). Last, the
train split's record index is written (`tfrecords.write_index`), from which the
training input plans its epochs and resumes without replaying them.
"""

import collections
from collections.abc import Iterable
from collections.abc import Iterator
import contextlib
import itertools
import json

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow as tf
import tqdm

from stalign import data
from stalign import fs
from stalign import precompute
from stalign.data import audio
from stalign.data import features
from stalign.data import layout
from stalign.data import sources
from stalign.data import text as text_lib
from stalign.data import tfrecords
from stalign.models import frontend


def _featurize(
  examples: Iterable[dict],
  config: ml_collections.ConfigDict,
  skipped: collections.Counter,
  skip_examples: dict,
) -> Iterator[dict]:
  """Loads and checks audio, computes log-mel and CTC targets; skips bad input with a reason."""
  fcfg = config.features
  for ex in examples:
    name = ex.get("audio_filepath") or ex["id"]
    try:
      if "error" in ex:  # A manifest line that is not a row (`sources.read_manifest`).
        raise ex["error"]
      if "waveform" in ex:
        wave = audio.check_waveform(
          np.asarray(ex["waveform"], np.float32),
          ex["sample_rate"],
          fcfg.sample_rate,
          fcfg.max_seconds,
          name,
        )
      else:
        wave = audio.load_audio(ex["audio_filepath"], fcfg.sample_rate, fcfg.max_seconds)
      if ex.get("speed", 1.0) != 1.0:
        wave = audio.change_speed(wave, ex["speed"])
      labels = text_lib.encode_targets(ex["text"], fcfg.ctc_targets)
    except (audio.AudioError, text_lib.TranscriptError, sources.ManifestError) as e:
      reason = type(e).__name__ + ": " + str(e).split(": ", 1)[-1].split(";")[0]
      skipped[reason] += 1
      skip_examples.setdefault(reason, name)
      logging.warning("skipping %s", e)
      continue
    yield {
      "id": ex["id"],
      "text": text_lib.normalize(ex["text"]),
      "features": frontend.featurize(wave, fcfg),
      "ctc_labels": labels,
      "duration": wave.size / fcfg.sample_rate,
      "labels": ex.get("labels", {}),
    }


def write_split(
  examples: Iterable[dict],
  config: ml_collections.ConfigDict,
  split: str,
  num_shards: int,
  total: int | None = None,
) -> dict:
  """Writes a split atomically and returns (and stores) its summary of what went in and out."""
  fs.makedirs(layout.tfrecords_dir(config.data_dir))
  for stale in fs.glob(layout.tfrecords_dir(config.data_dir), f"{split}-*"):
    fs.remove(stale)  # Leftovers of a killed write: the split is rewritten whole.
  names = [layout.shard_path(config.data_dir, split, i, num_shards) for i in range(num_shards)]
  skipped, skip_examples = collections.Counter(), {}
  speakers = collections.Counter()  # Evaluation tells seen voices from unseen ones by these.
  written = unalignable = 0
  seconds = 0.0
  stream = tqdm.tqdm(
    examples, total=total, desc=f"tfrecords/{split}", unit="utt", mininterval=2, disable=None
  )
  # A shard appears only once the whole split is written (`fs.staged`), so a killed or failed
  # write leaves no shard that looks finished.
  with contextlib.ExitStack() as stack:
    writers = [
      stack.enter_context(tf.io.TFRecordWriter(stack.enter_context(fs.staged(n)))) for n in names
    ]
    for record in _featurize(stream, config, skipped, skip_examples):
      writers[written % num_shards].write(tfrecords.serialize(record))
      written += 1
      labels = record["ctc_labels"]
      output_frames = features.ctc_frames(record["features"].shape[0], config.model)
      unalignable += not text_lib.ctc_alignable(
        labels[None], np.array([len(labels)]), np.array([output_frames])
      )[0]
      seconds += record["duration"]
      if "speaker" in record["labels"]:
        speakers[str(record["labels"]["speaker"])] += 1
  summary = {
    "split": split,
    "read": written + sum(skipped.values()),
    "written": written,
    "skipped": dict(skipped),
    "skipped_example": skip_examples,
    "ctc_unalignable": unalignable,
    "hours": seconds / 3600,
    "shards": num_shards,
    "speakers": dict(sorted(speakers.items())),
    **layout.built_with_record(config, split),
  }
  with fs.atomic_write(layout.summary_path(config.data_dir, split)) as f:
    json.dump(summary, f, indent=2)
  logging.info(
    "split %s: %d read, %d written, skipped %s, %d not CTC-alignable",
    split,
    summary["read"],
    written,
    dict(skipped) or "none",
    unalignable,
  )
  return summary


def prepare(config: ml_collections.ConfigDict) -> dict:
  """Idempotent: splits whose summary exists are kept; returns each split's summary."""
  if jax.process_index() == 0:
    write_splits(config)
  multihost_utils.sync_global_devices("data splits written")  # No host reads one half-written.
  precompute.precompute(config, layout.splits(config))
  if jax.process_index() == 0:
    ensure_index(config, "train")  # After precompute, which rewrites the shards.
  multihost_utils.sync_global_devices("record index written")
  return {split: layout.read_summary(config.data_dir, split) for split in layout.splits(config)}


def ensure_index(config: ml_collections.ConfigDict, split: str) -> None:
  """Writes the split's record index unless an up-to-date one exists (a rerun reuses it)."""
  try:
    tfrecords.read_index(config.data_dir, split)
  except tfrecords.MissingIndexError as e:
    logging.info("indexing split %s (%s)", split, e)
    tfrecords.write_index(config.data_dir, split)


def with_speed_copies(examples: Iterable[dict], speeds: Iterable[float]) -> Iterator[dict]:
  """Each example, followed by one copy of it per factor in `speeds` (`audio.change_speed`).

  Why: the real recordings mixed into training come from a few speakers; speed-perturbed
  copies of them are new-sounding voices saying the same words (Ko et al., 2015). A copy's
  id says its factor, so every record stays traceable to its file.
  """
  speeds = tuple(speeds)
  for ex in examples:
    yield ex
    for speed in speeds if "error" not in ex else ():
      yield {**ex, "id": f"{ex['id']}@speed{speed:g}", "speed": speed}


def write_splits(config: ml_collections.ConfigDict) -> dict:
  """Writes every split that has no summary yet; returns each split's summary."""
  source = sources.get(config.data.source)
  summaries = {}
  for split in layout.splits(config):
    if fs.exists(layout.summary_path(config.data_dir, split)):
      summaries[split] = layout.read_summary(config.data_dir, split)
      layout.check_built_with(config, split, summaries[split])
      logging.info(
        "split %s: reusing %d examples in %s", split, summaries[split]["written"], config.data_dir
      )
      continue
    if config.data.real_sources and split == data.real_split(config.eval.split):
      # Each real source's speakers held out for eval.split; train_extra trains on the others.
      examples = itertools.chain(
        *(sources.get(name)(config, config.eval.split) for name in config.data.real_sources)
      )
    else:
      examples = source(config, split)
    if split == "train" and config.data.train_extra:
      extra = [
        with_speed_copies(sources.get(name)(config, split), config.data.train_extra_speeds)
        for name in config.data.train_extra
      ]
      examples = itertools.chain(examples, *extra)  # The reader's shuffle mixes them.
    summaries[split] = write_split(examples, config, split, config.data.num_shards)
  return summaries
