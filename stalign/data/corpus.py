r"""Embedded synthetic speech-text corpus: the grammar's sentences spoken by espeak-ng.

The sentences and their labels (lexicon, domains, held-out zero-shot intents)
come from `stalign.data.grammar`, and the train split may add open-vocabulary
WordNet examples (`stalign.data.wordnet`, domain "wordnet", no other text
labels); this module plans each utterance's voice and augmentation, renders the
audio, and writes the manifests and statistics.

Audio: each utterance is synthesised in-process (`stalign.data.espeak`, 22.05
kHz), resampled to 16 kHz with speed perturbation folded into the same resampling
step, mixed with white or pink noise at a random SNR, and written as PCM16.

Layout of `out_dir` (`build_corpus`):
  audio/{split}/{id}.wav   16 kHz mono PCM16, each written atomically.
  {split}.jsonl            one utterance per line: id, audio_filepath (relative
                           to out_dir; `sources.read_manifest` resolves it),
                           duration, text, labels.
  config.json              the corpus config this folder is built from.
  summary.json             counts, hours, speed and lexical statistics; written
                           last, so its presence marks a complete build.

Determinism: the whole plan (sentences, voices, augmentation) is drawn in the
parent from RNGs keyed by (seed, split, index). espeak-ng output also depends
on what the process synthesised before (see `stalign.data.espeak`), so audio
is rendered in fixed chunks of consecutive utterances, each in a freshly forked
process with its own pristine instance of the library, forked from a child
interpreter that never imports JAX. Same config, same bytes,
whatever the number of workers or their scheduling.

Resuming: a chunk whose wavs all exist is skipped; any other chunk is rendered
again from its start (which reproduces the wavs it already had).
"""

from collections.abc import Iterator
import dataclasses
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import soundfile as sf
import soxr
import tqdm

from stalign import data
from stalign import fs
from stalign.data import corpus_stats
from stalign.data import espeak
from stalign.data import grammar
from stalign.data import wordnet

SAMPLE_RATE = 16_000


# --------------------------------------------------------------------------
# The plan: every utterance's text, labels and audio settings, drawn up front.


@dataclasses.dataclass(frozen=True)
class Utterance:
  split: str
  index: int
  text: str
  labels: dict[str, Any]

  @property
  def id(self) -> str:
    return f"{self.split}-{self.index:06d}"

  @property
  def audio_filepath(self) -> str:
    return os.path.join("audio", self.split, f"{self.id}.wav")


def _bucket(value: float, lo: float, hi: float) -> str:
  """Thirds of the configured range, so buckets are balanced by design."""
  third = min(int(3 * (value - lo) / (hi - lo)), 2) if hi > lo else 1
  return ("low", "medium", "high")[third]


def _audio_labels(rng: np.random.Generator, config: ml_collections.ConfigDict) -> dict[str, Any]:
  aug = config.augment
  rate = int(rng.integers(config.rate[0], config.rate[1] + 1))
  pitch = int(rng.integers(config.pitch[0], config.pitch[1] + 1))
  noisy = bool(rng.random() < aug.noise_prob)
  return dict(
    voice=grammar.pick(rng, tuple(config.voices)),
    rate=rate,
    rate_bucket={"low": "slow", "medium": "medium", "high": "fast"}[_bucket(rate, *config.rate)],
    pitch=pitch,
    pitch_bucket=_bucket(pitch, *config.pitch),
    speed=round(float(rng.uniform(*aug.speed)), 3),
    noise_snr_db=(round(float(rng.uniform(*aug.noise_snr_db)), 1) if noisy else None),
    noise_type=grammar.pick(rng, ("white", "pink")) if noisy else "none",
  )


def plan_corpus(config: ml_collections.ConfigDict) -> dict[str, list[Utterance]]:
  """Draws every utterance (text, labels, audio settings) without audio.

  Sentences come from `grammar.plan_sentences`, audio settings from another
  stream of the same utterance RNG, so the plan depends only on the config.
  `corpus.wordnet_sentences` WordNet examples follow the train split's grammar
  sentences (`_wordnet_sentences`); the other splits stay grammar-only.
  """
  sizes = {split: int(config[f"num_{split}"]) for split in data.SPLITS + (data.ZERO_SHOT_SPLIT,)}
  sentences = grammar.plan_sentences(config.seed, sizes)
  sentences["train"] += [(text, {"domain": "wordnet"}) for text in _wordnet_sentences(config)]
  plan = {}
  for split, split_sentences in sentences.items():
    plan[split] = []
    for index, (text, labels) in enumerate(split_sentences):
      rng = grammar.utterance_rng(config.seed, split, index, 1)
      plan[split].append(Utterance(split, index, text, {**labels, **_audio_labels(rng, config)}))
  return plan


def _wordnet_sentences(config: ml_collections.ConfigDict) -> list[str]:
  """`corpus.wordnet_sentences` WordNet examples, drawn without replacement by the corpus seed.

  Read English beyond the grammar's lexicon (`stalign.data.wordnet`). A corpus
  config from before the key existed has none.
  """
  count = int(config.get("wordnet_sentences", 0))
  if not count:
    return []
  examples = wordnet.example_sentences(config.wordnet_dir)
  if count > len(examples):
    raise ValueError(
      f"corpus.wordnet_sentences={count} exceeds the {len(examples)} WordNet examples in "
      f"{config.wordnet_dir}"
    )
  # Its own stream (3), keyed by the seed alone: the grammar's are 0 (text) and 1-2 (audio).
  rng = grammar.utterance_rng(config.seed, "train", 0, 3)
  return [examples[i] for i in rng.choice(len(examples), count, replace=False)]


# --------------------------------------------------------------------------
# Audio rendering, in worker processes.


def _noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
  """Unit-power white or pink (1/f power) noise."""
  noise = rng.standard_normal(n)
  if colour == "pink":
    spectrum = np.fft.rfft(noise)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    noise = np.fft.irfft(spectrum, n)
  return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def _render(utt: Utterance, seed: int) -> np.ndarray:
  """The utterance's 16 kHz PCM16 samples."""
  labels = utt.labels
  wave = espeak.synthesize(utt.text, labels["voice"], labels["rate"], labels["pitch"])
  # Resampling to 16 kHz / speed and playing at 16 kHz speeds up by `speed`.
  wave = soxr.resample(wave, espeak.SAMPLE_RATE, SAMPLE_RATE / labels["speed"])
  if labels["noise_snr_db"] is not None:
    rng = grammar.utterance_rng(seed, utt.split, utt.index, 2)
    noise = _noise(rng, len(wave), labels["noise_type"])
    gain = np.sqrt(np.mean(wave**2) / 10 ** (labels["noise_snr_db"] / 10))
    wave = wave + gain * noise
  peak = np.max(np.abs(wave))
  if peak > 0.99:
    wave = wave * (0.99 / peak)
  return np.round(wave * 32767).astype(np.int16)


def _write_wav(path: str, pcm: np.ndarray):
  """Atomic, so an interrupted build never leaves a truncated file behind."""
  with fs.atomic_write(path, "wb") as f:
    sf.write(f, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")


def _frames(path: str) -> int:
  with fs.open(path, "rb") as f:
    return sf.info(f).frames


def _render_chunk(task: tuple[int, str, list[Utterance]]) -> tuple[int, float]:
  """Renders one chunk in a fresh process; returns (utterances, seconds)."""
  seed, out_dir, utterances = task
  seconds = 0.0
  for utt in utterances:
    pcm = _render(utt, seed)
    _write_wav(os.path.join(out_dir, utt.audio_filepath), pcm)
    seconds += len(pcm) / SAMPLE_RATE
  return len(utterances), seconds


def _chunks(plan: dict[str, list[Utterance]], size: int) -> Iterator[list[Utterance]]:
  for utterances in plan.values():
    for start in range(0, len(utterances), size):
      yield utterances[start : start + size]


def _render_all(chunks: list[list[Utterance]], seed: int, out_dir: str, workers: int) -> float:
  """Renders `chunks` on `workers` processes of a child interpreter; returns seconds of audio.

  The child (`python -m stalign.data.corpus`) imports this module only and forks
  one fresh process per chunk from there (`_render_pool`). Forking the caller
  instead would fork its JAX threads (and on a pod the gRPC threads of
  `jax.distributed`), which JAX warns may deadlock; spawning a process per chunk
  would re-import the caller's main module, and JAX, for every chunk.
  """
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
  with tempfile.TemporaryDirectory(prefix="stalign-corpus-") as tmp:
    tasks = os.path.join(tmp, "tasks.pkl")
    with fs.open(tasks, "wb") as f:
      pickle.dump((chunks, seed, out_dir, workers), f)
    # The child's progress bar and any error go to this process's stderr.
    done = subprocess.run([sys.executable, "-m", __name__, tasks], env=env, check=False)
    if done.returncode:
      raise RuntimeError(
        f"rendering the corpus into {out_dir} failed (exit {done.returncode}; the error is printed "
        "above); rerun the same command to resume: finished chunks are kept"
      )
    return float(fs.read_text(tasks + ".seconds"))


def _render_pool(chunks: list[list[Utterance]], seed: int, out_dir: str, workers: int) -> float:
  """Renders `chunks` on `workers` processes, one fresh process per chunk; returns seconds.

  A fresh process per chunk (maxtasksperchild=1), forked from a process that
  never ran JAX, so the audio depends on the chunk alone (module docstring).
  """
  ctx = multiprocessing.get_context("fork")
  seconds = 0.0
  with (
    ctx.Pool(min(workers, len(chunks)), maxtasksperchild=1) as pool,
    tqdm.tqdm(total=sum(map(len, chunks)), unit="utt", desc="synthesising corpus") as bar,
  ):
    tasks = [(seed, out_dir, chunk) for chunk in chunks]
    for count, chunk_seconds in pool.imap_unordered(_render_chunk, tasks):
      seconds += chunk_seconds
      bar.update(count)
  return seconds


# --------------------------------------------------------------------------
# Building.


def _settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the output depends on, as JSON would read it."""
  settings = config.to_dict()
  settings.pop("workers", None)  # Output is identical for any worker count.
  if not settings.get("wordnet_sentences"):
    # No WordNet text: the corpus is the one built before these keys existed, which it matches.
    settings.pop("wordnet_sentences", None)
    settings.pop("wordnet_dir", None)
  return json.loads(json.dumps(settings))


def _write_json(path: str, obj: Any, lines: bool = False):
  with fs.atomic_write(path) as f:
    if lines:
      f.writelines(json.dumps(o) + "\n" for o in obj)
    else:
      json.dump(obj, f, indent=2)


def _claim(out_dir: str, settings: dict[str, Any]):
  """Refuses to mix files of two different configs in one folder."""
  path = os.path.join(out_dir, "config.json")
  if fs.exists(path):
    if json.loads(fs.read_text(path)) != settings:
      raise ValueError(
        f"{out_dir} holds a corpus built from another config (see "
        f"{path}); delete it or build into another folder."
      )
  else:
    _write_json(path, settings)


def build_corpus(config: ml_collections.ConfigDict, out_dir: str) -> dict[str, Any]:
  """Builds (or finishes, or just returns) the corpus in `out_dir`.

  Args:
    config: the `corpus` part of the experiment config (configs/demo.py).
    out_dir: where the audio, manifests and summary go; see module docstring.

  Returns:
    The contents of `out_dir/summary.json`.
  """
  settings = _settings(config)
  fs.makedirs(out_dir)
  _claim(out_dir, settings)
  summary_path = os.path.join(out_dir, "summary.json")
  if fs.exists(summary_path):
    logging.info("Corpus in %s is complete.", out_dir)
    return json.loads(fs.read_text(summary_path))

  start = time.time()
  plan = plan_corpus(config)
  for split in plan:
    fs.makedirs(os.path.join(out_dir, "audio", split))
  chunks = [
    c
    for c in _chunks(plan, settings["chunk_size"])
    if not all(fs.exists(os.path.join(out_dir, u.audio_filepath)) for u in c)
  ]
  workers = config.workers or os.cpu_count()
  rendered = sum(map(len, chunks))
  logging.info(
    "Synthesising %d of %d utterances into %s on %d processes.",
    rendered,
    sum(map(len, plan.values())),
    out_dir,
    workers,
  )
  rendered_seconds = _render_all(chunks, config.seed, out_dir, workers) if chunks else 0.0

  manifests = {}
  for split, utterances in plan.items():
    manifests[split] = [
      dict(
        id=u.id,
        audio_filepath=u.audio_filepath,
        duration=_frames(os.path.join(out_dir, u.audio_filepath)) / SAMPLE_RATE,
        text=u.text,
        labels=u.labels,
      )
      for u in utterances
    ]
    _write_json(os.path.join(out_dir, f"{split}.jsonl"), manifests[split], lines=True)
  wall = time.time() - start
  summary = corpus_stats.summary(manifests, settings, wall, rendered_seconds, rendered)
  _write_json(summary_path, summary)
  logging.info(
    "Corpus: %.2f h of audio; rendered %.0f s in %.1f s (real-time factor %.0f).",
    summary["hours"]["total"],
    rendered_seconds,
    wall,
    summary["real_time_factor"],
  )
  return summary


if __name__ == "__main__":
  # `_render_all`'s child: renders the pickled chunks and writes the seconds of audio beside them.
  with fs.open(sys.argv[1], "rb") as f:
    rendered = _render_pool(*pickle.load(f))
  with fs.atomic_write(sys.argv[1] + ".seconds") as f:
    f.write(repr(rendered))
