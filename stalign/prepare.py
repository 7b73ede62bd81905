"""Data preparation: every split the run needs, as TFRecords, and the teacher's embeddings.

The `data` stage of `stalign.main`. A split is written once from any source
(synthetic corpus, user manifest, FSDD, LibriSpeech, AN4, TFDS): audio is checked and turned into
features (log-mel, or frozen Whisper frames) by the front end inference uses, and bad input is
skipped with a counted reason. Then `stalign.precompute` embeds each distinct transcript once.
Evaluators only read: every split they use is built here.

Every process writes its share of every split's shards (shard i: process i mod processes)
straight to their final place, local or `gs://` (no shared POSIX disk is assumed). A shard
appears only when complete (a rename, or one upload: `stalign.fs`), and then its marker: what went
in, each record's offset and frames, its transcripts. A killed or preempted stage resumes shard by
shard, rewriting none that has its marker. Once every process has written its shards, process 0
merges the markers into the split's record index (from which training plans its epochs and
resumes without replaying them) and, last, its `{split}.summary.json`: a split counts as written
only then, so a killed job never leaves a half-written split that looks finished. No shard is
read back or written twice.
"""

import collections
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
import dataclasses
import functools
import itertools
import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
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
      if ex.get("narrowband"):
        wave = audio.narrowband(wave, fcfg.sample_rate)
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


@dataclasses.dataclass
class SplitExamples:
  """A split's examples, cut into shards without featurising any of them.

  Listed examples (file-backed sources: a list of paths and transcripts) go round-robin, example
  k to shard k mod n, so every shard mixes every source. A source that reads its own shards
  (`sources.READS_OWN_SHARDS`: decoded audio that cannot be listed up front) adds its i-th range
  to shard i.
  """

  listed: list[dict] = dataclasses.field(default_factory=list)
  ranged: list[Callable[[int, int], Iterable[dict]]] = dataclasses.field(default_factory=list)

  def shard(self, index: int, num_shards: int) -> Iterator[dict]:
    return itertools.chain(
      *(read(index, num_shards) for read in self.ranged), self.listed[index::num_shards]
    )


def split_examples(config: ml_collections.ConfigDict, split: str) -> SplitExamples:
  """Where each example of `split` comes from: its source, and the train split's extras."""
  if config.data.real_sources and split == data.real_split(config.eval.split):
    # Each real source's speakers held out for eval.split; train_extra trains on the others.
    parts = [(name, config.eval.split) for name in config.data.real_sources]
  else:
    parts = [(config.data.source, split)]
  parts = [(name, source_split, Copies()) for name, source_split in parts]
  if split == "train":
    # The reader's shuffle mixes them.
    parts += [
      (
        name,
        split,
        Copies(tuple(config.data.train_extra_speeds), name in config.data.narrowband_copies),
      )
      for name in config.data.train_extra
    ]
  examples = SplitExamples()
  for name, source_split, copies in parts:
    source = sources.get(name)
    if name in sources.READS_OWN_SHARDS:
      read = functools.partial(_read_shard, source, config, source_split, copies)
      examples.ranged.append(read)
    else:
      examples.listed.extend(copies.of(source(config, source_split)))
  return examples


def _read_shard(source, config, split, copies, index, num_shards) -> Iterator[dict]:
  return copies.of(source(config, split, shard=(index, num_shards)))


def _write_shard(examples: Iterable[dict], config: ml_collections.ConfigDict, path: str) -> dict:
  """Writes one shard of featurised examples; returns its marker: what went in and where."""
  skipped, skip_examples = collections.Counter(), {}
  speakers = collections.Counter()  # Evaluation tells seen voices from unseen ones by these.
  texts, num_frames = set(), []
  counts = {"unalignable": 0, "seconds": 0.0}

  def serialized():
    for record in _featurize(examples, config, skipped, skip_examples):
      labels = record["ctc_labels"]
      num_frames.append(record["features"].shape[0])
      output_frames = features.ctc_frames(num_frames[-1], config.model)
      counts["unalignable"] += not text_lib.ctc_alignable(
        labels[None], np.array([len(labels)]), np.array([output_frames])
      )[0]
      counts["seconds"] += record["duration"]
      texts.add(record["text"])
      if "speaker" in record["labels"]:
        speakers[str(record["labels"]["speaker"])] += 1
      yield tfrecords.serialize(record)

  lengths = tfrecords.write_shard(path, serialized())
  offsets = tfrecords.offsets(lengths)
  return {
    "written": len(lengths),
    "skipped": dict(skipped),
    "skipped_example": skip_examples,
    "ctc_unalignable": counts["unalignable"],
    "seconds": counts["seconds"],
    "speakers": dict(speakers),
    "texts": sorted(texts),
    "offset": offsets[:-1],
    "length": lengths,
    "num_frames": num_frames,
    "bytes": offsets[-1],
  }


def _marker(
  config: ml_collections.ConfigDict, split: str, index: int, num_shards: int
) -> dict | None:
  """The shard's marker if it is finished for this config, else None (it is to be written)."""
  path = layout.shard_marker_path(config.data_dir, split, index, num_shards)
  if not fs.exists(path):
    return None
  marker = json.loads(fs.read_text(path))
  return marker if marker["built_with"] == layout.built_with_record(config, split) else None


def write_shards(
  examples: SplitExamples, config: ml_collections.ConfigDict, split: str, num_shards: int
) -> None:
  """Writes this process's shards of the split (i mod processes) that have no marker yet."""
  fs.makedirs(layout.tfrecords_dir(config.data_dir))
  mine = range(jax.process_index(), num_shards, jax.process_count())
  todo = [i for i in mine if _marker(config, split, i, num_shards) is None]
  if len(todo) < len(mine):
    logging.info(
      "split %s: %d of this process's shards already written", split, len(mine) - len(todo)
    )
  known = None if examples.ranged else sum(len(examples.listed[i::num_shards]) for i in todo)
  with tqdm.tqdm(
    total=known, desc=f"tfrecords/{split}", unit="utt", mininterval=2, disable=None
  ) as progress:
    for i in todo:
      marker = _write_shard(
        _counted(examples.shard(i, num_shards), progress),
        config,
        layout.shard_path(config.data_dir, split, i, num_shards),
      )
      marker["built_with"] = layout.built_with_record(config, split)
      with fs.atomic_write(layout.shard_marker_path(config.data_dir, split, i, num_shards)) as f:
        json.dump(marker, f)


def _counted(examples: Iterable[dict], progress: tqdm.tqdm) -> Iterator[dict]:
  for ex in examples:
    yield ex
    progress.update()


def finish_split(config: ml_collections.ConfigDict, split: str, num_shards: int) -> dict:
  """Merges the shards' markers into the split's index and then its summary (written last)."""
  markers = [_marker(config, split, i, num_shards) for i in range(num_shards)]
  if None in markers:
    missing = [i for i, marker in enumerate(markers) if marker is None]
    raise RuntimeError(
      f"split {split}: shards {missing[:5]} of {num_shards} are unfinished after every process "
      f"wrote its share; rerun `{layout.PREPARE_COMMAND}` to write them"
    )
  files = [layout.shard_path(config.data_dir, split, i, num_shards) for i in range(num_shards)]
  columns = {
    "shard": [i for i, marker in enumerate(markers) for _ in range(marker["written"])],
    **{name: sum((m[name] for m in markers), []) for name in ("offset", "length", "num_frames")},
  }
  tfrecords.save_index(config.data_dir, split, files, columns, [m["bytes"] for m in markers])
  skipped, skip_examples, speakers = collections.Counter(), {}, collections.Counter()
  for marker in markers:
    skipped.update(marker["skipped"])
    speakers.update(marker["speakers"])
    for reason, name in marker["skipped_example"].items():
      skip_examples.setdefault(reason, name)
  written = sum(m["written"] for m in markers)
  summary = {
    "split": split,
    "format": layout.DATA_FORMAT,
    "read": written + sum(skipped.values()),
    "written": written,
    "skipped": dict(skipped),
    "skipped_example": skip_examples,
    "ctc_unalignable": sum(m["ctc_unalignable"] for m in markers),
    "hours": sum(m["seconds"] for m in markers) / 3600,
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
    summary["ctc_unalignable"],
  )
  return summary


def write_split(
  examples: SplitExamples | Iterable[dict],
  config: ml_collections.ConfigDict,
  split: str,
  num_shards: int,
) -> dict:
  """Writes a split in one process: every shard, then its index and summary (returned)."""
  if not isinstance(examples, SplitExamples):
    examples = SplitExamples(listed=list(examples))
  _remove_other_shardings(config, split, num_shards)
  write_shards(examples, config, split, num_shards)
  return finish_split(config, split, num_shards)


def _remove_other_shardings(config: ml_collections.ConfigDict, split: str, num_shards: int) -> None:
  """Removes a split's shards and markers of another shard count (a changed data.num_shards)."""
  suffix = f"-of-{num_shards:05d}"
  for path in fs.glob(layout.tfrecords_dir(config.data_dir), f"{split}-*-of-*"):
    if not os.path.basename(path).split(".")[0].endswith(suffix):
      fs.remove(path)


def prepare(config: ml_collections.ConfigDict) -> dict:
  """Idempotent and resumable: splits whose summary exists are kept, and so are finished shards
  of the others; then the teacher's embeddings. Returns each split's summary."""
  summaries = write_splits(config)
  precompute.precompute(config, layout.splits(config))
  return summaries


@dataclasses.dataclass(frozen=True)
class Copies:
  """The altered copies of each training clip of a `data.train_extra` source.

  Why: the real recordings mixed into training come from a few speakers and one kind of
  microphone. A speed-perturbed copy (`data.train_extra_speeds`) sounds like a slightly different
  speaker saying the same words (Ko et al., 2015); a narrowband one (`data.narrowband_copies`)
  like the same speaker on an 8 kHz line (`audio.narrowband`). A copy's id says how it was made,
  so every record stays traceable to its file.
  """

  speeds: tuple[float, ...] = ()
  narrowband: bool = False

  def of(self, examples: Iterable[dict]) -> Iterator[dict]:
    """Each example, followed by its copies: one per speed, then the narrowband one."""
    for ex in examples:
      yield ex
      if "error" in ex:
        continue
      for speed in self.speeds:
        yield {**ex, "id": f"{ex['id']}@speed{speed:g}", "speed": speed}
      if self.narrowband:
        yield {**ex, "id": f"{ex['id']}@{audio.NARROWBAND_RATE // 1000}khz", "narrowband": True}


def write_splits(config: ml_collections.ConfigDict) -> dict:
  """Writes every split that has no summary yet, each process its shards; returns the summaries."""
  num_shards = config.data.num_shards
  todo = []
  for split in layout.splits(config):
    if fs.exists(layout.summary_path(config.data_dir, split)):
      summary = layout.read_summary(config.data_dir, split)
      layout.check_built_with(config, split, summary)
      logging.info(
        "split %s: reusing %d examples in %s", split, summary["written"], config.data_dir
      )
    else:
      todo.append(split)
  if todo and jax.process_index() == 0:
    for split in todo:
      _remove_other_shardings(config, split, num_shards)
  multihost_utils.sync_global_devices("stale shards removed")
  for split in todo:
    write_shards(split_examples(config, split), config, split, num_shards)
  multihost_utils.sync_global_devices("every process's shards written")  # Markers complete.
  if jax.process_index() == 0:
    for split in todo:
      finish_split(config, split, num_shards)
  multihost_utils.sync_global_devices("data splits written")  # No host reads one half-written.
  return {split: layout.read_summary(config.data_dir, split) for split in layout.splits(config)}
