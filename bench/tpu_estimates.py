"""Estimates (not measurements) for configs/tpu_multitask.py on LibriSpeech 960 h.

Model FLOPs of one train step come from XLA's cost analysis of the lowered
step (blocks unrolled, no rematerialisation: the model's own FLOPs; a scanned
loop body would be counted once). The rest is arithmetic with stated inputs:
LibriSpeech's published size, a chip's bf16 peak, an assumed utilisation, and
the input reader's throughput measured on this machine. Every figure is
labelled with its formula in the output.
"""

import functools
import time
from typing import Any

from bench import _common
from configs import demo
from configs import tpu_multitask
from stalign import input_pipeline
from stalign.data import layout

UTTERANCES = 281_241  # LibriSpeech 960 h training utterances (Panayotov et al., 2015).
MEAN_SECONDS = 12.3  # 960 h / 281,241.
V4_32 = {"chips": 16, "bf16_peak_flops": 275e12, "hosts": 4}
ASSUMED_MFU = 0.4
READER_BATCHES = 60


@functools.cache  # bench/input_reader.py asks for the same count in the same process.
def step_flops_per_utterance(seconds: float = 12.0) -> float:
  """Model FLOPs of the TPU config's train step on one utterance of `seconds`.

  Counted as the accelerator benchmark counts them (`_common.model_flops`).
  """
  config = tpu_multitask.get_config()
  config.input.batch_size = 1
  return _common.model_flops(config, int(seconds * 100))


def reader_audio_seconds_per_second() -> float | None:
  """Seconds of audio per second the training input pipeline delivers on the demo data (built by
  `make demo`), if present: the reader's speed does not depend on the model."""
  config = demo.get_config()
  try:
    summary = layout.read_summary(config.data_dir, "train")
    it = input_pipeline.train_iterator(config, "train", 384)
  except FileNotFoundError:
    return None
  next(it)
  start = time.perf_counter()
  for _ in range(READER_BATCHES):
    next(it)
  per_batch = (time.perf_counter() - start) / READER_BATCHES
  mean_seconds = summary["hours"] * 3600 / summary["written"]
  return config.input.batch_size * mean_seconds / per_batch


def run() -> dict[str, Any]:
  flops_12s = step_flops_per_utterance(12.0)
  epoch_flops = UTTERANCES * flops_12s * MEAN_SECONDS / 12.0
  chip = V4_32
  compute_s = epoch_flops / (chip["chips"] * chip["bf16_peak_flops"] * ASSUMED_MFU)
  out = {
    "train_step_flops_per_12s_utterance": flops_12s,
    "epoch_flops": epoch_flops,
    "epoch_flops_formula": "utterances x flops(12 s) x mean_seconds / 12 (FLOPs ~ linear in "
    "length at 80 ms frames; padding adds ~10%)",
    "v4_32_epoch_compute_seconds_estimate": round(compute_s, 1),
    "v4_32_formula": f"epoch_flops / ({chip['chips']} chips x 275 TFLOP/s bf16 x assumed MFU "
    f"{ASSUMED_MFU})",
  }
  audio_s_per_s = reader_audio_seconds_per_second()
  if audio_s_per_s is not None:
    out["reader_audio_seconds_per_second_per_host_measured_here"] = round(audio_s_per_s, 1)
    out["v4_32_epoch_reader_seconds_estimate"] = round(
      UTTERANCES * MEAN_SECONDS / (audio_s_per_s * chip["hosts"]), 1
    )
    out["reader_formula"] = "utterances x mean_seconds / (audio s/s of one host's reader x hosts)"
  return out
