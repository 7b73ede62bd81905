"""The optimizer of training and its learning-rate schedule, built from `config.train`.

Apart from the step functions so that what an update does to the parameters
(warmup and decay, clipping, AdamW, the slower rate of pretrained blocks,
accumulation, skipping non-finite updates) reads in one place, and so that the
benchmarks build the same optimizer as a run (`bench._common.TrainStep`).
"""

from typing import Any

import jax
import ml_collections
import numpy as np
import optax


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup, then cosine or linear decay to 2% of the peak, in optimizer updates.

  `train.steps` and `train.warmup_steps` count micro-batches; with gradient
  accumulation the optimizer (and so this schedule) advances once per
  `train.grad_accumulation` of them, so both are divided by it.
  """
  t = config.train
  updates = max(t.steps // t.grad_accumulation, 1)
  warmup = t.warmup_steps // t.grad_accumulation
  decay_steps = max(updates - warmup, 1)
  if t.schedule == "cosine":
    tail = optax.cosine_decay_schedule(t.lr, decay_steps, alpha=0.02)
  else:
    tail = optax.linear_schedule(t.lr, 0.02 * t.lr, decay_steps)
  return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup), tail], [warmup])


def make_optimizer(
  config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """AdamW with clipping, optional accumulation, and a guard that skips non-finite updates."""
  t = config.train
  parts = [
    optax.clip_by_global_norm(t.grad_clip),
    optax.adamw(schedule, weight_decay=t.weight_decay),
  ]
  if (config.model.whisper_tuned_layers or config.model.teacher_layers) and (
    t.pretrained_lr_factor != 1
  ):
    # Pretrained blocks move at a fraction of the fresh head's rate (decay included), so a
    # few thousand noisy steps on little data refine them rather than overwrite them.
    parts.append(optax.masked(optax.scale(t.pretrained_lr_factor), is_pretrained))
  tx = optax.chain(*parts)
  if t.grad_accumulation > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=t.grad_accumulation)
  # Skips (and counts) every update whose gradients are not finite, however
  # many in a row, so the parameters can never be poisoned; the loop reads the
  # counters at log and checkpoint steps and stops a run that keeps failing.
  return optax.apply_if_finite(tx, max_consecutive_errors=np.iinfo(np.int32).max)


def is_pretrained(params: Any) -> Any:
  """A tree of `params`' structure, True where a parameter is warm-started from pretrained weights:
  the student's Whisper blocks (`Student.whisper`) and the teacher's layers on top
  (`Student.teacher_top`, its fresh input projection excepted)."""

  def pretrained(path, _) -> bool:
    keys = [getattr(p, "key", None) for p in path]
    return keys[0] == "whisper" or (keys[0] == "teacher_top" and keys[1] != "project")

  return jax.tree_util.tree_map_with_path(pretrained, params)
