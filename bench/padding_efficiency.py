"""Real (non-padded) frames in the demo's training batches: configured buckets vs a baseline.

Needs the demo data (`make demo` builds it into data/demo). Every padded frame
costs as much compute as a real one, and every distinct padded length is one
more compilation of the train step: this shows both sides of that trade.
"""

import os
from typing import Any

from bench import _common
from configs import demo
from stalign import input_pipeline

BASELINE = (160, 240, 320, 480)  # The first guess, before looking at the lengths.
NUM_BATCHES = 468  # About three epochs of the demo's train split at batch 64.


def run() -> dict[str, Any]:
  config = demo.get_config()
  if not os.path.exists(os.path.join(config.data_dir, "tfrecords", "train.summary.json")):
    return {"skipped": f"no demo data in {config.data_dir}; run `make demo` first"}
  out = {"num_batches": NUM_BATCHES}
  for name, boundaries in (
    ("configured", tuple(config.input.bucket_boundaries)),
    ("baseline", BASELINE),
  ):
    config.input.bucket_boundaries = boundaries
    efficiency, lengths = input_pipeline.padding_efficiency(config, "train", NUM_BATCHES)
    out[name] = {
      "bucket_boundaries": list(boundaries),
      "real_frame_fraction": efficiency,
      "batches_per_padded_length": {str(k): v for k, v in sorted(lengths.items())},
    }
  configured, baseline = out["configured"], out["baseline"]
  out["ratios"] = [
    _common.ratio(
      "real-frame fraction: configured buckets / first guess",
      configured["real_frame_fraction"] / baseline["real_frame_fraction"],
      ("configured real-frame fraction", configured["real_frame_fraction"]),
      ("first-guess real-frame fraction", baseline["real_frame_fraction"]),
      f"{len(configured['batches_per_padded_length'])} padded lengths, each one more compiled "
      "step; padding within a bucket",
    )
  ]
  return out
