"""Orbax checkpointing: latest-N plus best-by-validation-loss, with the data position.

A checkpoint holds the train state (params, optimizer state, step) and the
input position `{"epoch", "batch"}` as JSON, so a resumed run sees exactly the
batches an uninterrupted run would have seen. A `gs://` workdir reaches orbax
unchanged (orbax writes arrays with tensorstore and the rest through
`etils.epath`, which `stalign.fs` points at the same gcsfs client as ours).
"""

from collections.abc import Sequence
import os
import re

from absl import logging
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from stalign import fs

BEST_METRIC = "valid_loss"


def manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  preserve = policies.AnyPreservationPolicy(
    [
      policies.LatestN(n=keep),
      policies.BestN(
        get_metric_fn=lambda m: m[BEST_METRIC],
        reverse=True,
        n=1,
        keep_checkpoints_without_metrics=False,
      ),
    ]
  )
  options = ocp.CheckpointManagerOptions(
    preservation_policy=preserve, enable_async_checkpointing=async_save, create=True
  )
  return ocp.CheckpointManager(os.path.join(fs.abspath(workdir), "checkpoints"), options=options)


def save(
  mgr: ocp.CheckpointManager, step: int, state, position: dict, metrics: dict | None = None
) -> None:
  mgr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)
    ),
    metrics=metrics,
    force=True,
  )


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state) -> tuple:
  """(state, position) of `step`, laid out as `abstract_state`'s shardings say."""
  out = mgr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), position=ocp.args.JsonRestore()
    ),
  )
  logging.info("restored checkpoint of step %d from %s", step, mgr.directory)
  return out["state"], out["position"]


def restore_params(path: str, abstract_params, step: int | None = None) -> tuple:
  """(params, step) of checkpoint `step` (default: latest) under a workdir or checkpoints folder.

  Only the params are read (no optimizer state): for `init_from` and for inference.
  """
  root = os.path.join(path, "checkpoints") if fs.isdir(os.path.join(path, "checkpoints")) else path
  mgr = ocp.CheckpointManager(fs.abspath(root))
  step = mgr.latest_step() if step is None else step
  if step is None or step not in mgr.all_steps():
    raise FileNotFoundError(
      f"no checkpoint {'' if step is None else step} under {root} (have {sorted(mgr.all_steps())})"
    )
  target = {"params": abstract_params}
  restored = mgr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
        target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      )
    ),
  )
  mgr.close()
  return restored["state"]["params"], step


def warm_start(fresh, restored, skip: Sequence[str]):
  """Restored params, except those whose path matches a `skip` regex (kept fresh).

  This is how ASR pretraining hands its encoder to distillation: the encoder
  comes from the checkpoint and, say, `init_skip=("pool_",)` starts the
  utterance head anew. Every decision is logged, so a partial restore is never silent.
  """
  patterns = [re.compile(p) for p in skip]
  kept_fresh = []

  def pick(path, new, old):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if any(p.search(name) for p in patterns):
      kept_fresh.append(name)
      return new
    return old

  params = jax.tree_util.tree_map_with_path(pick, fresh, restored)
  unused = [p for p in skip if not any(re.search(p, n) for n in kept_fresh)]
  if unused:
    raise ValueError(f"init_skip patterns {unused} match no parameter; check the names")
  logging.info(
    "warm start: %d params restored, %d kept fresh: %s",
    len(jax.tree.leaves(params)) - len(kept_fresh),
    len(kept_fresh),
    kept_fresh,
  )
  return params
