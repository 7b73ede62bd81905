"""Corpus synthesis: seconds of audio the espeak-ng renderer makes per wall second, per core.

`stalign.data.corpus.build_corpus` on the demo's corpus config, shrunk to
`utterances` training utterances, into a temporary folder: once on one worker
process, once on every core, so the per-core rate and how well it scales are
measured side by side. The rate counts the whole build (planning, rendering
in fresh forked processes, writing wavs and the manifests), as `make demo` pays
it. What limits it: `render_split` times, in this process (espeak-ng already
loaded), espeak-ng's synthesis alone and the whole per-utterance render
(synthesis, resampling, noise, PCM conversion) on the first utterances; their
cost over the build's core-seconds is rendering's share, the rest is the
build's overhead (a fresh process and espeak-ng instance per chunk, planning,
wav files, manifests).
"""

import os
import tempfile
import time
from typing import Any

import ml_collections

from bench import _common
from configs import demo
from stalign.data import corpus
from stalign.data import espeak

SPLIT_SAMPLE = 64  # Utterances timed for the synthesis / render split.


def corpus_config(utterances: int, workers: int) -> ml_collections.ConfigDict:
  config = demo.get_config().corpus
  config.num_train = utterances
  config.num_valid = config.num_test = config.num_zero_shot = 0
  config.workers = workers
  return config


def build(utterances: int, workers: int) -> dict[str, Any]:
  """Audio seconds and wall seconds of one build on `workers` processes."""
  with tempfile.TemporaryDirectory() as out:
    summary = corpus.build_corpus(corpus_config(utterances, workers), out)
  audio_s = summary["hours"]["total"] * 3600
  wall = summary["wall_seconds"]
  return {
    "workers": workers,
    "audio_seconds": audio_s,
    "wall_seconds": wall,
    "audio_seconds_per_second": audio_s / wall,
    "audio_seconds_per_core_second": audio_s / wall / workers,
  }


def render_split(sample: int = SPLIT_SAMPLE) -> dict[str, float]:
  """Seconds of espeak-ng synthesis vs whole renders of the same utterances, one process."""
  config = corpus_config(sample, 1)
  utterances = corpus.plan_corpus(config)["train"]
  corpus._render(utterances[0], config.seed)  # Loads and initialises espeak-ng.
  synth = render = 0.0
  for u in utterances:  # Side by side, utterance by utterance.
    start = time.perf_counter()
    espeak.synthesize(u.text, u.labels["voice"], u.labels["rate"], u.labels["pitch"])
    middle = time.perf_counter()
    corpus._render(u, config.seed)
    synth, render = synth + middle - start, render + time.perf_counter() - middle
  return {"utterances": sample, "synthesis_s": synth, "render_s": render, "share": synth / render}


def run(utterances: int = 640, split_sample: int = SPLIT_SAMPLE) -> dict[str, Any]:
  """One worker vs all cores on the same utterances; the synthesis share of a render."""
  cores = len(os.sched_getaffinity(0))
  one, every = build(utterances, 1), build(utterances, cores)
  split = render_split(split_sample)
  render_core_s = split["render_s"] / split["utterances"] * utterances
  split["rendering_share_of_build"] = render_core_s / (every["wall_seconds"] * cores)
  out = {"utterances": utterances, "one_worker": one, "all_cores": every, "render_split": split}
  out["ratios"] = [
    _common.ratio(
      f"audio s per core-second ({cores} workers)",
      every["audio_seconds_per_core_second"],
      ("audio s", every["audio_seconds"]),
      ("core-seconds", every["wall_seconds"] * cores),
      f"rendering is {split['rendering_share_of_build']:.0%} of the build's core time "
      f"(espeak-ng synthesis {split['share']:.0%} of a render); the rest: a fresh process and "
      "espeak-ng instance per chunk, planning, wav files, manifests",
    ),
    _common.ratio(
      f"per-core rate, {cores} workers / 1",
      every["audio_seconds_per_core_second"] / one["audio_seconds_per_core_second"],
      (f"{cores} workers audio s/s per core", every["audio_seconds_per_core_second"]),
      ("1 worker audio s/s", one["audio_seconds_per_core_second"]),
      "the parent's planning and manifest writing are serial; chunks balance over workers",
    ),
  ]
  return out
