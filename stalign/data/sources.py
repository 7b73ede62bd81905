"""Data sources: every dataset enters the pipeline as the same example dicts.

An example is `{"id", "text", "labels", "audio_filepath"}` or, for sources that
hold decoded audio (TFDS), `{"id", "text", "labels", "waveform", "sample_rate"}`.
The TFRecord writer is the only consumer, so adding a dataset means adding one
function here and naming it in the config (`data.source`).
"""
from collections.abc import Callable, Iterator
import glob
import json
import os
import re

import ml_collections

Source = Callable[[ml_collections.ConfigDict, str], Iterator[dict]]
_REGISTRY: dict[str, Source] = {}

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def register(name: str) -> Callable[[Source], Source]:
  def wrap(fn: Source) -> Source:
    _REGISTRY[name] = fn
    return fn
  return wrap


def get(name: str) -> Source:
  if name not in _REGISTRY:
    raise KeyError(f"unknown data source {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def read_manifest(path: str) -> Iterator[dict]:
  """NeMo-style JSONL (`audio_filepath`, `duration`, `text`); relative paths are relative to the file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"manifest {path} does not exist; check data.manifests in the config")
  base = os.path.dirname(os.path.abspath(path))
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        audio_path, text = row["audio_filepath"], row["text"]
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(
            f"{path}:{line_no}: not a manifest row ({e}); each line must be JSON with "
            "'audio_filepath' and 'text'") from e
      yield {
          "id": row.get("id", f"{os.path.basename(path)}:{line_no}"),
          "audio_filepath": os.path.join(base, audio_path),
          "text": text,
          "labels": row.get("labels", {}),
      }


def corpus_dir(config: ml_collections.ConfigDict) -> str:
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
  if split not in config.data.manifests:
    raise KeyError(f"no manifest for split {split!r}: set --config.data.manifests.{split}=PATH")
  yield from read_manifest(config.data.manifests[split])


_FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


@register("fsdd")
def fsdd(config: ml_collections.ConfigDict, split: str) -> Iterator[dict]:
  """A folder in Free Spoken Digit layout: `recordings/{digit}_{speaker}_{take}.wav`.

  `data.fsdd_speakers.<split>` lists the speakers of each split (all when empty),
  so a voice can be kept out of training and used to test generalisation.
  """
  folder = os.path.join(config.data.fsdd_dir, "recordings")
  files = sorted(glob.glob(os.path.join(folder, "*.wav")))
  if not files:
    raise FileNotFoundError(f"no FSDD recordings in {folder}; set --config.data.fsdd_dir")
  speakers = config.data.get("fsdd_speakers", {}).get(split, ())
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
