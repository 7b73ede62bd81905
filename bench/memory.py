"""Peak memory of a train step per second of audio, by utterance length, with and without remat.

From XLA's plan, not a measurement: `memory_analysis()` of the compiled step
(one device) gives the bytes of its arguments (parameters, optimizer state,
batch) and of the temporaries it allocates; their sum is the peak the step
can need, the same on every run, whatever else the machine is doing. Divided
by the seconds of audio in the batch (`input.batch_size` x the length) it is
the memory cost of audio. Constant means memory grows linearly with length;
attention scores (length^2 per head) and the CTC lattice (frames x labels,
both proportional to length) make it grow. `model.remat` recomputes each
block in the backward pass instead of keeping its activations.

The lengths default to two of the demo's bucket lengths (compiled already
when `bench.run` has run `compile_time`) and 48 s, four times its longest. The
curve is saved as memory.png beside the JSON.
"""

import os
from typing import Any

import ml_collections

from bench import _common
from configs import demo

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LENGTHS = (296, 1208, 4800)  # Frames of 10 ms: 3, 12 and 48 s.


def plot(curves: dict[str, dict[str, dict]], path: str) -> None:
  """Peak MB per second of audio against utterance seconds, one line per variant."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, points in curves.items():
    seconds = [p["utterance_seconds"] for p in points.values()]
    per_s = [p["peak_bytes_per_audio_second"] / 2**20 for p in points.values()]
    ax.plot(seconds, per_s, marker="o", label=name)
  ax.set_xlabel("utterance length (s)")
  ax.set_ylabel("peak MiB per second of audio in the batch")
  ax.set_title("train step memory (XLA plan, one device)")
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(
  config: ml_collections.ConfigDict | None = None,
  lengths: tuple[int, ...] = LENGTHS,
  plot_path: str | None = os.path.join(RESULTS, "memory.png"),
) -> dict[str, Any]:
  """Planned peak bytes of one step per length, remat off and on; growth over the lengths."""
  config = config or demo.get_config()
  rows = config.input.batch_size
  curves = {}
  for remat in (False, True):
    c = config.copy_and_resolve_references()
    c.model.remat = remat
    step = _common.TrainStep(c)
    points = {}
    for frames in lengths:
      seconds = frames * c.features.hop_ms / 1000
      memory = _common.step_memory_bytes(step.compile(frames))
      memory["utterance_seconds"] = seconds
      memory["peak_bytes_per_audio_second"] = memory["peak_bytes"] / (rows * seconds)
      points[str(frames)] = memory
    curves["remat" if remat else "no remat"] = points
  if plot_path:
    os.makedirs(os.path.dirname(plot_path), exist_ok=True)
    plot(curves, plot_path)
  short, long = str(lengths[0]), str(lengths[-1])
  base, remat = curves["no remat"], curves["remat"]
  out = {
    "batch": rows,
    "source": "compiled step's memory_analysis(): argument + temp bytes, one device",
    "curves": curves,
    "plot": plot_path,
  }
  out["ratios"] = [
    _common.ratio(
      f"per audio second: {base[long]['utterance_seconds']:g} s / "
      f"{base[short]['utterance_seconds']:g} s utterances",
      base[long]["peak_bytes_per_audio_second"] / base[short]["peak_bytes_per_audio_second"],
      ("MiB per audio s (long)", base[long]["peak_bytes_per_audio_second"] / 2**20),
      ("MiB per audio s (short)", base[short]["peak_bytes_per_audio_second"] / 2**20),
      "attention scores and the CTC lattice grow with length squared",
    ),
    _common.ratio(
      f"peak at {base[long]['utterance_seconds']:g} s: remat / no remat",
      remat[long]["peak_bytes"] / base[long]["peak_bytes"],
      ("remat MiB", remat[long]["peak_bytes"] / 2**20),
      ("no remat MiB", base[long]["peak_bytes"] / 2**20),
      "remat keeps each block's input only; the CTC lattice and the heads are not rematerialised",
    ),
  ]
  return out
