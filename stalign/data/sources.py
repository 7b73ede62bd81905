"""Data sources: every dataset enters the pipeline as the same example dicts.

An example is `{"id", "text", "labels", "audio_filepath"}` or, for sources that
hold decoded audio (TFDS), `{"id", "text", "labels", "waveform", "sample_rate"}`.
The TFRecord writer is the only consumer, so adding a dataset means adding one
function here and naming it in the config (`data.source`).
"""

import collections
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
import dataclasses
import json
import os
import re

from absl import logging
import ml_collections
import numpy as np

from stalign import data
from stalign import fs
from stalign import utils
from stalign.data import audio

Source = Callable[[ml_collections.ConfigDict, str], Iterator[dict]]
SOURCES: utils.Registry[Source] = utils.Registry("data source")
register = SOURCES.register
get = SOURCES.get

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class ManifestError(ValueError):
  """A manifest line that is not a row; the message names the file, the line and the fix."""


def _parse_row(path: str, line_no: int, line: str) -> dict:
  """The manifest row of `line`, or a ManifestError. The reason comes first after `path:line:`,
  so the data stage counts skips by it (`prepare._featurize`)."""
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    row = None
  if not isinstance(row, dict):
    problem = "not a JSON object"
  else:
    missing = [k for k in ("audio_filepath", "text") if not isinstance(row.get(k), str)]
    if not missing:
      return row
    problem = f"no {' or '.join(repr(k) for k in missing)} string"
  raise ManifestError(
    f"{path}:{line_no}: {problem}; each line must be a JSON object with 'audio_filepath' and 'text'"
  )


def read_manifest(path: str) -> Iterator[dict]:
  """NeMo-style JSONL (`audio_filepath`, `duration`, `text`); paths are relative to the file.

  A row's `speaker` field (NeMo's) becomes its `speaker` label unless `labels` names one.
  A line that is not a row is yielded as `{"id", "error": ManifestError}`, so one bad line
  is a counted skip of the data stage rather than the end of the whole split.
  """
  if not fs.exists(path):
    raise FileNotFoundError(f"manifest {path} does not exist; check data.manifests in the config")
  base = os.path.dirname(fs.abspath(path))
  with fs.open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = _parse_row(path, line_no, line)
      except ManifestError as e:
        yield {"id": f"{os.path.basename(path)}:{line_no}", "error": e}
        continue
      audio_path, text = row["audio_filepath"], row["text"]
      labels = row.get("labels", {})
      if "speaker" in row and "speaker" not in labels:
        labels = {**labels, "speaker": str(row["speaker"])}
      yield {
        "id": row.get("id", f"{os.path.basename(path)}:{line_no}"),
        "audio_filepath": os.path.join(base, audio_path),
        "text": text,
        "labels": labels,
      }


def corpus_dir(config: ml_collections.ConfigDict) -> str:
  """data_dir/corpus; for a `gs://` data_dir a local folder, ~/.cache/stalign/corpus/BUCKET/PATH.

  The renderer writes wav files from a pool of worker processes with plain
  file I/O, and only the TFRecords made from them are shared between hosts.
  """
  if fs.is_remote(config.data_dir):
    local = config.data_dir.replace("://", "/", 1)
    return os.path.join(os.path.expanduser("~/.cache/stalign/corpus"), local)
  return os.path.join(config.data_dir, "corpus")


@register("synthetic")
def synthetic(config: ml_collections.ConfigDict, split: str) -> Iterator[dict]:
  """The embedded espeak-ng corpus, built on first use (resumable) into data_dir/corpus."""
  from stalign.data import corpus  # Imported here: only this source needs espeak-ng.

  corpus.build_corpus(config.corpus, corpus_dir(config))
  yield from read_manifest(os.path.join(corpus_dir(config), f"{split}.jsonl"))


@register("manifest")
def manifest(config: ml_collections.ConfigDict, split: str) -> Iterator[dict]:
  """A user's own JSONL manifest per split: `data.manifests.<split> = path`."""
  if not config.data.manifests.get(split):
    raise FileNotFoundError(
      f"no manifest for split {split!r}: set --config.data.manifests.{split}=PATH"
    )
  yield from read_manifest(config.data.manifests[split])


_FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


# Each real speech source a config may read: its config key, what must exist under that path, and
# its folder in `data.REAL_SET_ORIGINS`.
_REAL_SETS = {
  "fsdd": ("data.fsdd_dir", "recordings", "fsdd"),
  "librispeech": ("data.librispeech_dir", "", "librispeech_mini"),
  "an4": ("data.an4_manifest", "", "an4"),
}


def check_real_speech(config: ml_collections.ConfigDict) -> None:
  """FileNotFoundError, in one line, for the first real speech set the data stage reads that is
  missing.

  Run before any work, so a clone without the sets stops at once, saying what each
  set is and where to get it, rather than minutes later. (Evaluation's FSDD zero-shot
  section is left out of the report when its folder is missing.)
  """
  names = {config.data.source, *config.data.train_extra, *config.data.real_sources}
  for name in sorted(names & set(_REAL_SETS)):
    key, inside, folder = _REAL_SETS[name]
    path = config.data[key.split(".", 1)[1]]
    if not fs.exists(os.path.join(path, inside) if inside else path):
      what = data.REAL_SET_ORIGINS[folder]
      raise FileNotFoundError(
        f"{name}: nothing at {path} ({key}); it is {what}. Put it there, set "
        f"${data.DATA_ROOT_ENV} to the folder holding fsdd/, an4/ and librispeech_mini/, "
        f"or set --config.{key}"
      )


@register("fsdd")
def fsdd(config: ml_collections.ConfigDict, split: str) -> Iterator[dict]:
  """A folder in Free Spoken Digit layout: `recordings/{digit}_{speaker}_{take}.wav`.

  `data.fsdd_speakers.<split>` lists the speakers of each split (all when empty),
  so a voice can be kept out of training and used to test generalisation.
  """
  yield from fsdd_examples(config.data.fsdd_dir, config.data.fsdd_speakers.get(split, ()))


def fsdd_examples(fsdd_dir: str, speakers: Sequence[str] = ()) -> Iterator[dict]:
  """Examples of an FSDD-layout folder, optionally only some speakers (all when empty)."""
  folder = os.path.join(fsdd_dir, "recordings")
  files = fs.glob(folder, "*.wav")
  if not files:
    raise FileNotFoundError(
      f"no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) in {folder}; "
      "set --config.data.fsdd_dir (or --fsdd_dir)"
    )
  for path in files:
    match = _FSDD_NAME.match(os.path.basename(path))
    if not match:
      continue
    digit, speaker, take = match.groups()
    if speakers and speaker not in speakers:
      continue
    yield {
      "id": f"fsdd/{speaker}/{digit}_{take}",
      "audio_filepath": path,
      "text": DIGIT_WORDS[int(digit)],
      "labels": {"digit": int(digit), "speaker": speaker, "domain": "digits"},
    }


def in_real_split(config: ml_collections.ConfigDict, split: str, speaker: str) -> bool:
  """Whether a real source's `speaker` ("librispeech/1088", "an4/fash") belongs to `split`.

  `data.real_held_out.valid` and `.test` name the speakers of those splits; train is every
  other speaker, so no voice evaluated as unseen is ever trained on.
  """
  held = config.data.real_held_out
  if split == "train":
    return speaker not in held.valid and speaker not in held.test
  if split in ("valid", "test"):
    return speaker in held[split]
  raise ValueError(
    f"real speech sources have train, valid and test splits (data.real_held_out), not {split!r}"
  )


def _speakers_of_split(
  config: ml_collections.ConfigDict, split: str, examples: Iterator[dict]
) -> Iterator[dict]:
  return (ex for ex in examples if in_real_split(config, split, ex["labels"]["speaker"]))


_LIBRISPEECH_LAYOUT = (
  "SUBSET/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt (lines 'ID TRANSCRIPT') beside ID.flac, "
  "at any depth below it"
)


@register("librispeech")
def librispeech(config: ml_collections.ConfigDict, split: str) -> Iterator[dict]:
  """LibriSpeech subsets extracted under `data.librispeech_dir`; speakers by data.real_held_out."""
  yield from _speakers_of_split(config, split, librispeech_examples(config.data.librispeech_dir))


def librispeech_examples(root: str) -> list[dict]:
  """Every utterance of the LibriSpeech subsets under `root` (any depth), sorted by id."""
  transcripts = [
    path
    for path in fs.walk_files(root)
    if path.endswith(".trans.txt")
    and os.path.basename(path)
    == "-".join(os.path.normpath(path).split(os.sep)[-3:-1]) + ".trans.txt"
  ]
  if not transcripts:
    raise FileNotFoundError(
      f"no LibriSpeech transcripts in {root}; set --config.data.librispeech_dir to a folder "
      f"holding {_LIBRISPEECH_LAYOUT}"
    )
  examples = []
  for path in transcripts:
    folder = os.path.dirname(path)
    speaker, chapter = os.path.normpath(folder).split(os.sep)[-2:]
    for line in fs.read_text(path).splitlines():
      if not line.strip():
        continue
      utterance, _, text = line.strip().partition(" ")
      examples.append(
        {
          "id": f"librispeech/{utterance}",
          "audio_filepath": os.path.join(folder, f"{utterance}.flac"),
          "text": text,
          "labels": {
            "speaker": f"librispeech/{speaker}",
            "chapter": chapter,
            "domain": "librispeech",
          },
        }
      )
  return sorted(examples, key=lambda ex: ex["id"])


@register("an4")
def an4(config: ml_collections.ConfigDict, split: str) -> Iterator[dict]:
  """CMU AN4 as a NeMo manifest with speakers (`data.an4_manifest`); by `data.real_held_out`."""
  yield from _speakers_of_split(config, split, an4_examples(config.data.an4_manifest))


def an4_examples(path: str) -> Iterator[dict]:
  """Every row of an AN4 manifest, its speaker and id prefixed `an4/`."""
  if not fs.isfile(path):
    raise FileNotFoundError(
      f"no AN4 manifest at {path}; set --config.data.an4_manifest to a NeMo JSONL file whose "
      "lines hold 'audio_filepath' (relative to the file), 'text' and 'speaker'"
    )
  for ex in read_manifest(path):
    if "error" in ex:
      raise ex["error"]  # Without its speaker a row has no split to be skipped in.
    speaker = ex["labels"].get("speaker")
    if speaker is None:
      raise ValueError(
        f"{path}: row {ex['id']} has no 'speaker'; the an4 source selects speakers per split "
        "(data.real_held_out), so every line needs one"
      )
    stem = os.path.splitext(os.path.basename(ex["audio_filepath"]))[0]
    yield {
      **ex,
      "id": f"an4/{stem}",
      "labels": {"speaker": f"an4/{speaker}", "domain": "an4"},
    }


@dataclasses.dataclass(frozen=True)
class _TfdsDataset:
  """How one TFDS speech dataset maps onto stalign examples."""

  audio_key: str
  splits: dict[str, str]  # stalign split -> TFDS split, unless data.tfds_splits says otherwise.
  # (TFDS example, label names) -> (text, labels), or a str: the reason to skip it.
  fields: Callable[[dict, tuple[str, ...]], tuple[str, dict] | str]


def _librispeech_fields(ex: dict, names: tuple[str, ...]) -> tuple[str, dict]:
  del names
  return ex["text"].decode(), {
    "speaker": str(ex["speaker_id"]),
    "chapter": str(ex["chapter_id"]),
    "domain": "librispeech",
  }


def _spoken_digit_fields(ex: dict, names: tuple[str, ...]) -> tuple[str, dict]:
  del names
  digit = int(ex["label"])
  labels = {"digit": digit, "domain": "digits"}
  # TFDS keeps FSDD's file name, so the speaker label matches the `fsdd` source's.
  match = _FSDD_NAME.match(os.path.basename(ex["audio/filename"].decode()))
  if match:
    labels["speaker"] = match.group(2)
  return DIGIT_WORDS[digit], labels


def _speech_commands_fields(ex: dict, names: tuple[str, ...]) -> tuple[str, dict] | str:
  word = names[int(ex["label"])]
  if word.startswith("_"):
    # `_silence_` is background noise with no transcript; `_unknown_` pools many
    # other words without saying which, so neither has a text to align to.
    return word
  return word, {"command": word, "domain": "commands"}


TFDS_DATASETS = {
  "librispeech": _TfdsDataset(
    "speech",
    {"train": "train_clean100", "valid": "dev_clean", "test": "test_clean"},
    _librispeech_fields,
  ),
  # TFDS has one split of all FSDD clips; sliced 80/10/10 by default.
  "spoken_digit": _TfdsDataset(
    "audio",
    {"train": "train[:80%]", "valid": "train[80%:90%]", "test": "train[90%:]"},
    _spoken_digit_fields,
  ),
  "speech_commands": _TfdsDataset(
    "audio", {"train": "train", "valid": "validation", "test": "test"}, _speech_commands_fields
  ),
}


def _pcm_to_float(wave: np.ndarray) -> np.ndarray:
  """TFDS stores 16-bit PCM as int16 (or int64 for spoken_digit); both scale by 2**15."""
  if np.issubdtype(wave.dtype, np.integer):
    return wave.astype(np.float32) / 32768.0
  return wave.astype(np.float32)


# Sources that hold decoded audio, which cannot be listed up front: the data stage asks them
# for one shard's examples at a time (`shard=(i, n)`), so each process decodes only its shards.
READS_OWN_SHARDS = frozenset({"tfds"})


def _tfds_shard(builder, tfds_split: str, index: int, num_shards: int) -> tuple[str, int]:
  """(TFDS split string of shard `index` of `num_shards`: a contiguous range, its first position).

  TFDS writes a dataset's examples in a shuffled order, so a range mixes its speakers.
  """
  import tensorflow_datasets as tfds  # Imported here: only this source needs it.

  parts = []  # (TFDS split, first example, end), absolute.
  for spec in tfds_split.split("+"):
    part = tfds.core.ReadInstruction.from_spec(spec).to_absolute(builder.info.splits)[0]
    end = builder.info.splits[part.splitname].num_examples if part.to is None else part.to
    parts.append((part.splitname, part.from_ or 0, end))
  total = sum(end - first for _, first, end in parts)
  low, high = index * total // num_shards, (index + 1) * total // num_shards
  ranges, seen = [], 0
  for name, first, end in parts:
    start, stop = max(low - seen, 0), min(high - seen, end - first)
    if start < stop:
      ranges.append(f"{name}[{first + start}:{first + stop}]")
    seen += end - first
  return "+".join(ranges), low


@register("tfds")
def tfds_source(
  config: ml_collections.ConfigDict, split: str, shard: tuple[int, int] | None = None
) -> Iterator[dict]:
  """A prepared TensorFlow Datasets speech dataset: `data.tfds_name`, read from `data.tfds_dir`.

  Nothing is downloaded here: a dataset that was never built is an error that
  says how to build it, so a training job never starts a multi-GB download.
  `data.tfds_splits.<split>` overrides the default TFDS split of each split
  (any TFDS split string, e.g. "train_clean360" or "train[:5%]"). `shard=(i, n)` reads the
  i-th of n contiguous ranges of it only (`READS_OWN_SHARDS`).
  """
  import tensorflow_datasets as tfds  # Imported here: only this source needs it.

  name = config.data.tfds_name
  dataset = TFDS_DATASETS.get(name.split(":")[0].split("/")[0])
  if dataset is None:
    raise ValueError(
      f"data.tfds_name={name!r} is not one of the TFDS speech datasets stalign "
      f"knows how to read: {sorted(TFDS_DATASETS)}"
    )
  tfds_split = config.data.tfds_splits.get(split) or dataset.splits.get(split)
  if not tfds_split:
    raise ValueError(
      f"no TFDS split for split {split!r}: set --config.data.tfds_splits.{split}=SPLIT"
    )
  data_dir = config.data.tfds_dir or None
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"TFDS dataset {name!r} is not prepared under {builder.data_dir}; build it once with "
      f"`tfds build {name} --data_dir={data_dir or '~/tensorflow_datasets'}` (downloads the "
      "data), or point --config.data.tfds_dir at a folder that holds it"
    )
  features = builder.info.features
  sample_rate = features[dataset.audio_key].sample_rate
  names = tuple(features["label"].names) if "label" in features else ()
  skipped = collections.Counter()
  read, first = tfds_split, 0
  if shard is not None and shard[1] > 1:
    read, first = _tfds_shard(builder, tfds_split, *shard)
    if not read:
      return  # More shards than examples: this one is empty.
  ds = builder.as_dataset(split=read, shuffle_files=False)
  for index, ex in enumerate(tfds.as_numpy(ds), start=first):
    fields = dataset.fields(ex, names)
    if isinstance(fields, str):
      skipped[fields] += 1
      continue
    text, labels = fields
    own_id = ex.get("id", ex.get("audio/filename", b"")).decode()
    example_id = f"{name}/{tfds_split}/{own_id or index}"
    yield {
      "id": example_id,
      "text": text,
      "labels": labels,
      "waveform": audio.to_mono(_pcm_to_float(ex[dataset.audio_key]), example_id),
      "sample_rate": sample_rate,
    }
  if skipped:
    logging.info("tfds %s/%s: left out %s (no transcript)", name, tfds_split, dict(skipped))
