"""What scanning and rematerialising the TPU config's blocks cost on one accelerator.

`configs/tpu_multitask.py` scans its 17 Conformer blocks (one compiled body)
and rematerialises them (activations recomputed in the backward pass): that
keeps compiles short and a TPU chip's share of the batch inside its memory.
On a GPU with memory to spare the same step may run faster unrolled and
without recomputation. This benchmark times the per-chip step (full model,
12 s utterances, one device) as configured and with those switches flipped,
each row exactly as `accelerator.measure` times it (jitted as training jits
it, in rounds alternating with a bfloat16 matmul), and records compile
seconds and XLA's temporary memory beside the step time.

On a machine without an accelerator `run()` records why it did not run.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from bench import _common
from bench import accelerator
from configs import tpu_multitask

# Switches of each variant, as dotted config keys.
VARIANTS = {
  "as configured (scan, remat)": {},
  "scan, no remat": {"model.remat": False},
  "unrolled, remat": {"model.scan_blocks": False},
  "unrolled, no remat": {"model.scan_blocks": False, "model.remat": False},
}
# (batch, variant): every switch at a chip's share of a large batch, the extremes at 256.
ROWS = (
  *((64, name) for name in VARIANTS),
  (256, "as configured (scan, remat)"),
  (256, "unrolled, no remat"),
)


def variant_config(batch: int, changes: dict[str, Any]) -> ml_collections.ConfigDict:
  """The TPU config on one device at `batch` utterances, with `changes` (dotted keys) applied."""
  config = tpu_multitask.get_config()
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  config.input.batch_size = batch
  for key, value in changes.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _gib(size: int | None) -> str:
  return "unknown" if size is None else f"{size / 2**30:.1f} GiB"


def run(
  rows: tuple[tuple[int, str], ...] = ROWS,
  frames: int = int(accelerator.SECONDS * 100),
  repeats: int = 10,
  matmul_n: int = accelerator.MATMUL_N,
  require_accelerator: bool = True,
) -> dict[str, Any]:
  """Per (batch, variant): step time, compile seconds, temporary memory and MFU."""
  device = jax.devices()[0]
  if require_accelerator and device.platform == "cpu":
    return {"skipped": "no accelerator: JAX sees only CPUs (run it where it sees a GPU or TPU)"}
  datasheet = accelerator.datasheet_peak(device.device_kind)
  peak = _common.MatmulPeak(matmul_n, jnp.bfloat16)
  out = {"device_kind": device.device_kind, "datasheet_bf16_flops_per_s": datasheet}
  out["rows"], out["ratios"] = [], []
  baseline = {}
  for batch, name in rows:
    result = accelerator.measure(variant_config(batch, VARIANTS[name]), frames, peak, repeats)
    result["variant"] = name
    if datasheet:
      result["mfu_over_datasheet"] = result["achieved_flops_per_s"] / datasheet
    out["rows"].append(result)
    print(  # Progress: each row compiles the full model, a minute on a fast host.
      f"accelerator_variants: batch {batch}, {name}: {result['step_median_s'] * 1e3:.1f} ms/step, "
      f"compiled in {result['compile_s']:.0f} s",
      flush=True,
    )
    baseline.setdefault(batch, result)
    if result is not baseline[batch]:
      out["ratios"].append(
        _common.ratio(
          f"step time, {name} / as configured (batch {batch})",
          result["step_median_s"] / baseline[batch]["step_median_s"],
          (f"{name} step s", result["step_median_s"]),
          ("as configured step s", baseline[batch]["step_median_s"]),
          f"temporary memory {_gib(result['temp_bytes'])} vs "
          f"{_gib(baseline[batch]['temp_bytes'])} on one {device.device_kind}",
        )
      )
  return out
