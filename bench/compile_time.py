"""Seconds to compile the train step with the Conformer blocks unrolled vs scanned.

Compilation is paid inside a run's budget once per bucket shape. With
`model.scan_blocks` the block is compiled once and scanned over depth, so the
cost stops growing with depth. Both variants are lowered and compiled in this
process, alternating, with the persistent compilation cache off, so the ratio
is measured side by side. Needs no data: the step is compiled from shapes
(`jax.ShapeDtypeStruct`).
"""

import functools
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from configs import demo
from stalign import train
from stalign.data import features
from stalign.models import student

TEACHER_DIM = 384


def _abstract_batch(config, frames: int) -> dict:
  batch = config.input.batch_size
  labels = features.ctc_frames(frames, config.model)
  spec = {
    "features": ((batch, frames, config.features.num_mels), jnp.float32),
    "num_frames": ((batch,), jnp.int32),
    "ctc_labels": ((batch, labels), jnp.int32),
    "num_labels": ((batch,), jnp.int32),
    "teacher": ((batch, TEACHER_DIM), jnp.float32),
    "weight": ((batch,), jnp.float32),
  }
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}


def compile_seconds(config, frames: int) -> float:
  """Wall seconds to lower and compile one train step for batches of `frames` frames."""
  tx = train.make_optimizer(config, train.make_schedule(config))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: student.build(config, TEACHER_DIM)))
  state = jax.eval_shape(functools.partial(train.init_state, config, tx, TEACHER_DIM))
  step = functools.partial(
    train.train_step,
    graphdef=graphdef,
    tx=tx,
    config=config,
    target_mean=np.zeros(TEACHER_DIM, np.float32),
  )
  start = time.perf_counter()
  jax.jit(step).lower(state, _abstract_batch(config, frames)).compile()
  return time.perf_counter() - start


def run(frames: int = 296, depths: tuple[int, ...] = (4, 12), repeats: int = 2) -> dict[str, Any]:
  """Compile seconds of one demo-shaped train step (batch 64 x `frames`), per depth, both ways.

  Depth 4 is the demo's; deeper students (the TPU configs have 17 blocks) are
  where scanning pays: the unrolled step's compile time grows with depth.
  """
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return _run(frames, depths, repeats)
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)


def _run(frames: int, depths: tuple[int, ...], repeats: int) -> dict[str, Any]:
  config = demo.get_config()
  out = {"frames": frames, "batch": config.input.batch_size, "depths": {}}
  for depth in depths:
    config.model.depth = depth
    seconds = {"unrolled": [], "scanned": []}
    for _ in range(repeats):  # Alternating, so both see the same machine load.
      for name, scan in (("unrolled", False), ("scanned", True)):
        config.model.scan_blocks = scan
        seconds[name].append(round(compile_seconds(config, frames), 2))
    medians = {k: float(np.median(v)) for k, v in seconds.items()}
    out["depths"][depth] = {
      "compile_seconds": seconds,
      "median_seconds": medians,
      "scanned_over_unrolled": round(medians["scanned"] / medians["unrolled"], 3),
    }
  return out
