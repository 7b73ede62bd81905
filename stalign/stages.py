"""One run's stages: data -> train -> evaluate, as `stalign.main` and `stalign.study` run them.

Both commands run a run the same way: its resolved config saved beside it
(`config.json`, what `stalign.load` and a rerun's checks read), then each
stage asked for, in this order. Every stage is resumable on its own (the data
stage keeps finished splits, training resumes from the latest checkpoint,
evaluation rewrites the report), so a command may run any of them again.
"""

from collections.abc import Callable
from collections.abc import Sequence
import os
from typing import Any

import jax
import ml_collections

from stalign import evaluate
from stalign import fs
from stalign import prepare
from stalign import train

STAGES = ("data", "train", "evaluate")


def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`workdir/config.json`: the resolved config of the run (process 0 writes it)."""
  if jax.process_index() == 0:
    fs.makedirs(workdir)
    with fs.atomic_write(os.path.join(workdir, "config.json")) as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def run_stages(
  config: ml_collections.ConfigDict,
  workdir: str,
  stages: Sequence[str] = STAGES,
  on_stage: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
  """Saves the run's config, then runs `stages` (in `STAGES` order) of the run in `workdir`.

  Every process calls this: the stages are collective (barriers in the data
  stage, a sharded training step, orbax restores), and process 0 writes what
  is shared.

  Args:
    config: the run's validated config.
    workdir: the run folder.
    stages: which of `STAGES` to run.
    on_stage: called with (stage, result) as each stage ends, before the next
      starts (a command's one line per stage).

  Returns:
    {stage: result}: each split's summary (data), the training summary
    (train), report.json's content (evaluate).
  """
  unknown = sorted(set(stages) - set(STAGES))
  if unknown:
    raise ValueError(f"unknown stages {unknown}; use {', '.join(STAGES)}")
  run = {
    "data": lambda: prepare.prepare(config),
    "train": lambda: train.train_and_evaluate(config, workdir),
    # Every process evaluates (restoring a checkpoint is a collective for orbax) and process 0
    # writes the report; the evaluation itself runs on each process's own devices.
    "evaluate": lambda: evaluate.evaluate(config, workdir),
  }
  _save_config(config, workdir)
  results = {}
  for stage in STAGES:
    if stage in stages:
      results[stage] = run[stage]()
      if on_stage is not None:
        on_stage(stage, results[stage])
  return results
