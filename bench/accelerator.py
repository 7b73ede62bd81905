"""The TPU config's train step on an accelerator: throughput and model FLOPs utilisation.

What a CPU cannot show: how fast `configs/tpu_multitask.py`'s step runs on a
chip with matrix units. Two configs, each jitted exactly as training jits it
(`_common.TrainStep`: bfloat16 compute, scanned and rematerialised blocks, as
configured), on one device:

- `runlocal`: the config's local variant as it is (width 32, 2 blocks, batch
  8 of its longest bucket, 4 s). Far too small to fill an accelerator; its
  row says how far launch overhead is from the work.
- `per chip, batch B`: the full model (width 512, 17 blocks, 104M
  parameters) on B utterances of 12 s (LibriSpeech's mean is 12.3 s), for B
  = 16 (a v4-32 chip's share of the global batch of 256), 64 and 256.

Model FLOPs are XLA's cost analysis of the same step with the blocks
unrolled and not rematerialised, lowered for the CPU (a scanned body is
counted once, recomputation is not model work, and a GPU's compiled program
hides its matmuls from the count; `_common.model_flops`). MFU divides them by the median step time
and by two peaks: a bfloat16 8192^2 matmul measured in the same rounds
(`_common.MatmulPeak`), and the vendor's dense bfloat16 figure for the chip,
where known (`DATASHEET_BF16`).

On a machine without an accelerator `run()` records why it did not run and
returns at once, so `make bench` stays CPU-only.
"""

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from bench import _common
from bench import tpu_estimates
from configs import tpu_multitask

SECONDS = 12.0  # Utterance length of the per-chip rows.
PER_CHIP_BATCHES = (16, 64, 256)
MATMUL_N = 8192
# Dense bfloat16 FLOP/s from the vendors' datasheets, by a substring of `device_kind`.
DATASHEET_BF16 = {
  "H100": 989e12,
  "H200": 989e12,
  "A100": 312e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5p": 459e12,
}


def default_configs() -> list[tuple[str, ml_collections.ConfigDict, int]]:
  """(name, config, frames per utterance) of each measured step, all on one device."""
  out = []
  local = tpu_multitask.get_config("runlocal")
  local.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  out.append(("runlocal", local, int(local.features.max_seconds * 100)))
  for batch in PER_CHIP_BATCHES:
    out.append((f"per chip, batch {batch}", per_chip_config(batch), int(SECONDS * 100)))
  return out


def per_chip_config(batch: int) -> ml_collections.ConfigDict:
  """The full TPU config on one device at `batch` utterances."""
  config = tpu_multitask.get_config()
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  config.input.batch_size = batch
  return config


def datasheet_peak(device_kind: str) -> float | None:
  return next((v for k, v in DATASHEET_BF16.items() if k in device_kind), None)


def measure(
  config: ml_collections.ConfigDict, frames: int, peak: _common.MatmulPeak, repeats: int
) -> dict[str, Any]:
  """Step time, throughput and MFU of one config, timed in rounds with the matmul peak."""
  step = _common.TrainStep(config)
  rows = config.input.batch_size
  start = time.perf_counter()
  compiled = step.compile(frames)
  compile_s = time.perf_counter() - start
  batch = step.device_batch(_common.synthetic_batch(config, frames, rows))
  holder = {"state": step.init()}

  def run_step():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready(metrics)

  run_step()
  seconds = _common.alternate({"step": run_step, "matmul": peak}, repeats)
  step_s = _common.median(seconds["step"])
  flops = _common.model_flops(config, frames)
  peak_flops = peak.flops_per_s(seconds["matmul"])
  memory = compiled.memory_analysis()
  audio_s = rows * frames * config.features.hop_ms / 1000
  return {
    "batch": rows,
    "frames": frames,
    "model": {k: config.model[k] for k in ("dim", "depth", "heads", "scan_blocks", "remat")},
    "compute_dtype": config.train.compute_dtype,
    "num_params": int(step.num_params),
    "compile_s": compile_s,
    "model_flops_per_step": flops,
    "step_seconds": seconds["step"],
    "step_median_s": step_s,
    "utterances_per_s": rows / step_s,
    "audio_seconds_per_s": audio_s / step_s,
    "librispeech_960h_epoch_s": (
      tpu_estimates.UTTERANCES * tpu_estimates.MEAN_SECONDS / (audio_s / step_s)
    ),
    "achieved_flops_per_s": flops / step_s,
    "matmul_peak_flops_per_s": peak_flops,
    "mfu_over_matmul_peak": flops / step_s / peak_flops,
    "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
  }


def run(
  configs: list[tuple[str, ml_collections.ConfigDict, int]] | None = None,
  repeats: int = 20,
  matmul_n: int = MATMUL_N,
  require_accelerator: bool = True,
) -> dict[str, Any]:
  """Per config: step time, utterances and audio seconds per second, MFU over both peaks."""
  device = jax.devices()[0]
  if require_accelerator and device.platform == "cpu":
    return {"skipped": "no accelerator: JAX sees only CPUs (run it where it sees a GPU or TPU)"}
  datasheet = datasheet_peak(device.device_kind)
  peak = _common.MatmulPeak(matmul_n, jnp.bfloat16)
  out = {"device_kind": device.device_kind, "datasheet_bf16_flops_per_s": datasheet}
  out["configs"], out["ratios"] = {}, []
  for name, config, frames in configs or default_configs():
    result = measure(config, frames, peak, repeats)
    if datasheet:
      result["mfu_over_datasheet"] = result["achieved_flops_per_s"] / datasheet
    out["configs"][name] = result
    print(  # Progress: the per-chip rows take minutes to compile on a slow host.
      f"accelerator: {name}: {result['step_median_s'] * 1e3:.1f} ms/step, "
      f"MFU {result['mfu_over_matmul_peak']:.3f} of the matmul peak, "
      f"compiled in {result['compile_s']:.0f} s",
      flush=True,
    )
    out["ratios"].append(
      _common.ratio(
        f"accelerator MFU / bf16 matmul peak ({name})",
        result["mfu_over_matmul_peak"],
        ("step TFLOP/s", result["achieved_flops_per_s"] / 1e12),
        (f"bf16 matmul {peak.n}^2 TFLOP/s", result["matmul_peak_flops_per_s"] / 1e12),
        f"{result['utterances_per_s']:.0f} utterances/s ({result['audio_seconds_per_s']:.0f} "
        f"audio s/s) on one {device.device_kind}; widths of 512 and the CTC recursion's "
        "sequential steps",
      )
    )
  return out
