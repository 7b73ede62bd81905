"""What scanning and rematerialising the TPU config's blocks cost on one accelerator.

`configs/tpu_multitask.py` scans its 17 Conformer blocks (one compiled body)
and rematerialises them (activations recomputed in the backward pass): that
keeps compiles short and a TPU chip's share of the batch inside its memory.
On a GPU with memory to spare the same step may run faster unrolled and
without recomputation. This benchmark times the per-chip step (full model,
12 s utterances, one device) as configured and with those switches flipped,
each row as `accelerator.run` times a config (jitted as training jits it, in
rounds alternating with a bfloat16 matmul; compile seconds and XLA's
temporary memory beside the step time), and adds each variant's step time
over the configured step's at the same batch.

On a machine without an accelerator `run()` records why it did not run.
"""

from typing import Any

import ml_collections

from bench import _common
from bench import accelerator

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
  """`accelerator.per_chip_config(batch)` with `changes` (dotted keys) applied."""
  config = accelerator.per_chip_config(batch)
  config.update_from_flattened_dict(changes)
  return config


def row_name(batch: int, variant: str) -> str:
  return f"batch {batch}, {variant}"


def _gib(size: int | None) -> str:
  return "unknown" if size is None else f"{size / 2**30:.1f} GiB"


def run(
  rows: tuple[tuple[int, str], ...] = ROWS,
  frames: int = int(accelerator.SECONDS * 100),
  repeats: int = 10,
  matmul_n: int = accelerator.MATMUL_N,
  require_accelerator: bool = True,
) -> dict[str, Any]:
  """`accelerator.run` over the rows, plus each row's step time over its batch's first row."""
  configs = [(row_name(b, name), variant_config(b, VARIANTS[name]), frames) for b, name in rows]
  out = accelerator.run(configs, repeats, matmul_n, require_accelerator)
  if "skipped" in out:
    return out
  first = {}
  for batch, name in rows:
    result = out["configs"][row_name(batch, name)]
    base_name = first.setdefault(batch, name)
    if name == base_name:
      continue
    base = out["configs"][row_name(batch, base_name)]
    out["ratios"].append(
      _common.ratio(
        f"step time, {name} / {base_name} (batch {batch})",
        result["step_median_s"] / base["step_median_s"],
        (f"{name} step s", result["step_median_s"]),
        (f"{base_name} step s", base["step_median_s"]),
        f"temporary memory {_gib(result['temp_bytes'])} vs {_gib(base['temp_bytes'])} "
        f"on one {out['device_kind']}",
      )
    )
  return out
