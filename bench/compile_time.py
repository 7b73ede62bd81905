"""Seconds to compile the demo's train step for every bucket shape: blocks unrolled vs scanned.

Compilation is paid inside the demo's ten-minute budget, once per bucket
shape. With `model.scan_blocks` the Conformer block is compiled once and
scanned over depth, so the cost stops growing with depth. Both variants are
lowered and compiled in this process, alternating per shape, with the
persistent compilation cache off, so the ratio is measured side by side.
Needs no data: the step is compiled from shapes (`jax.ShapeDtypeStruct`).
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
from stalign.data import text as text_lib
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


def run(bucket_limit: int | None = None) -> dict[str, Any]:
  jax.config.update("jax_enable_compilation_cache", False)
  config = demo.get_config()
  buckets = features.bucket_lengths(config)[:bucket_limit]
  seconds = {"unrolled": [], "scanned": []}
  for frames in buckets:
    for name, scan in (("unrolled", False), ("scanned", True)):
      config.model.scan_blocks = scan
      seconds[name].append(round(compile_seconds(config, frames), 2))
  total = {k: sum(v) for k, v in seconds.items()}
  return {
    "depth": config.model.depth,
    "bucket_frames": list(buckets),
    "vocab": text_lib.vocab_size(config.features.ctc_targets),
    "compile_seconds": seconds,
    "total_seconds": total,
    "scanned_over_unrolled": round(total["scanned"] / total["unrolled"], 3),
  }
