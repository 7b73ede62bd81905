"""Train steps/s fed by the real tf.data pipeline over steps/s on the same batches in memory.

The step must never wait for data: 1.0 means the input pipeline costs the
training loop nothing, and the aim is >= 0.95. Both sides run the demo's
jitted train step (`_common.TrainStep`, as the training loop builds it) over
the same batches: the first `steps` the pipeline yields after its first one,
whose latency (starting the pipeline) is reported apart as `first_batch_s`.
One side takes them from a fresh `input_pipeline.train_iterator` as
`train.train_and_evaluate` does (next batch, `device_batch`, `global_batch`,
step, no wait on the result), the other from a list already on the device.
Repetitions alternate. On a CPU the pipeline's threads and XLA's share the
same cores, which is what the ratio measures.

Data: the demo's (`make demo` builds `data/demo`); without it, a small
synthetic corpus is built once into `data/bench` (about a minute).
"""

import os
import time
from typing import Any

import jax
import ml_collections

from bench import _common
from configs import demo
from stalign import input_pipeline
from stalign import prepare
from stalign import train_steps
from stalign.data import layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_DATA_DIR = os.path.join(REPO, "data", "bench")


def small_data_config() -> ml_collections.ConfigDict:
  """The demo config on 1,024 synthetic training utterances, prepared on first use."""
  config = demo.get_config()
  config.data_dir = SMALL_DATA_DIR
  config.corpus.num_train = 1024
  config.corpus.num_valid = config.corpus.num_test = config.corpus.num_zero_shot = 16
  config.data.train_extra = config.data.real_sources = ()
  prepare.prepare(config)
  return config


def _has_train_data(config: ml_collections.ConfigDict) -> bool:
  try:
    layout.list_shards(config.data_dir, "train")
    layout.read_teacher_stats(config.data_dir)
  except FileNotFoundError:
    return False
  return True


def run(
  config: ml_collections.ConfigDict | None = None, steps: int = 16, repeats: int = 2
) -> dict[str, Any]:
  """Steps/s with the pipeline over steps/s from memory, `repeats` passes each, alternating."""
  config = config or demo.get_config()
  if not _has_train_data(config):
    config = small_data_config()
  teacher_dim, _ = layout.read_teacher_stats(config.data_dir)
  step = _common.TrainStep(config, teacher_dim)

  def batches():
    return input_pipeline.train_iterator(config, "train", teacher_dim)

  start = time.perf_counter()
  it = batches()
  first = next(it)
  first_batch_s = time.perf_counter() - start
  start = time.perf_counter()
  local = [train_steps.device_batch(next(it)) for _ in range(steps)]
  reader_s = time.perf_counter() - start
  del it, first
  holder = {"state": step.init()}
  start = time.perf_counter()
  shapes = set()
  for batch in local:  # Compiles (or loads) one step per padded length.
    length = batch["features"].shape[1]
    if length not in shapes:
      holder["state"], metrics = step(holder["state"], step.device_batch(batch))
      jax.block_until_ready(metrics)
      shapes.add(length)
  compile_s = time.perf_counter() - start
  on_device = jax.block_until_ready([step.device_batch(b) for b in local])

  def from_memory() -> None:
    for batch in on_device:
      holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics)

  def from_pipeline() -> float:
    it = batches()
    next(it)  # The first batch: not timed (first_batch_s).
    start = time.perf_counter()
    for _ in range(steps):
      batch = step.device_batch(train_steps.device_batch(next(it)))
      holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  seconds = _common.alternate({"pipeline": from_pipeline, "memory": from_memory}, repeats)
  pipeline_rate = steps / _common.median(seconds["pipeline"])
  memory_rate = steps / _common.median(seconds["memory"])
  reader_rate = steps / reader_s
  result = {
    "data_dir": config.data_dir,
    "batch": config.input.batch_size,
    "steps": steps,
    "padded_lengths": sorted(shapes),
    "first_batch_s": first_batch_s,
    "compile_s": compile_s,
    "reader_alone_batches_per_s": reader_rate,
    "pipeline_seconds": seconds["pipeline"],
    "memory_seconds": seconds["memory"],
    "pipeline_steps_per_s": pipeline_rate,
    "memory_steps_per_s": memory_rate,
    "pipeline_over_memory": pipeline_rate / memory_rate,
  }
  result["ratios"] = [
    _common.ratio(
      "steps/s: tf.data pipeline / batches in memory",
      result["pipeline_over_memory"],
      ("pipeline steps/s", pipeline_rate),
      ("in-memory steps/s", memory_rate),
      f"the reader alone gives {reader_rate:.0f} batches/s; what is lost is the reader's "
      "threads taking CPU from the step",
    )
  ]
  return result
