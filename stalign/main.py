r"""stalign's one entry point: data -> teacher embeddings -> training -> evaluation report.

  python -m stalign.main --config=configs/demo.py --workdir=runs/demo
  python -m stalign.main --config=configs/demo.py:tiny --workdir=/tmp/tiny \
      --config.train.steps=50 --config.loss.ctc_weight=0

Every stage is resumable: rerunning the same command reuses finished data,
resumes training from the workdir's latest checkpoint and rewrites the report.
Output is a progress bar and one summary line per stage; `--verbosity=0` adds
the INFO log (resolved config, mesh, batch arithmetic, checkpoints).
"""

import functools
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax

from stalign import cli
from stalign import config as config_lib
from stalign import report
from stalign import stages as stages_lib
from stalign.data import sources

_CONFIG, _WORKDIR, _COMPILATION_CACHE = cli.define_run_flags(
  config_help="Python config file with get_config(arg); `path.py:arg` passes arg (e.g. "
  "configs/demo.py:tiny). Override any key with --config.KEY=VALUE; unknown keys are an error.",
  workdir_help="Run directory: checkpoints, TensorBoard logs, report.",
)
_STAGES = flags.DEFINE_list(
  "stages",
  list(stages_lib.STAGES),
  "Stages to run, in order: data (corpus, TFRecords, teacher embeddings), train, evaluate.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0 for multi-process runs on CPU/GPU (TPU pods find it themselves).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index in a multi-process run."
)


def _check_flags(argv: list[str]) -> None:
  """Refuses bad flags before anything runs or `config.json` is written to the workdir."""
  cli.check_no_arguments(argv, cli.CONFIG_HINT)
  unknown = set(_STAGES.value) - set(stages_lib.STAGES)
  if unknown:
    raise app.UsageError(f"unknown --stages {sorted(unknown)}; use {', '.join(stages_lib.STAGES)}")


def main(argv):
  _check_flags(argv)
  cli.use_compilation_cache(_COMPILATION_CACHE.value)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config, workdir = config_lib.validate_config(_CONFIG.value), _WORKDIR.value
  config_lib.validate_mesh(config, jax.device_count())
  if "data" in _STAGES.value:
    sources.check_real_speech(config)
  logging.info(
    "process %d of %d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  logging.info("config:\n%s", config)
  stages_lib.run_stages(
    config, workdir, _STAGES.value, functools.partial(_print_stage, config, workdir)
  )


def _print_stage(config, workdir: str, stage: str, result: Any) -> None:
  """The one line (the report's headline, for evaluate) a stage prints on process 0."""
  if jax.process_index() > 0:
    return
  if stage == "data":
    splits = ", ".join(
      f"{split} {s['written']} utterances ({s['hours']:.2f} h)" for split, s in result.items()
    )
    print(f"data: {splits} in {config.data_dir}")
  elif stage == "train":
    valid = ", ".join(f"{k} {v:.3f}" for k, v in result["valid"].items() if k != "step")
    print(
      f"train: step {result['steps']} of {config.train.steps}"
      f"{' (preempted: rerun to resume)' if result['preempted'] else ''}; {valid}"
    )
  else:
    print(report.headline(result))
    print(f"\nreport: {os.path.join(workdir, 'report.md')}")


def run():
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)


if __name__ == "__main__":
  run()
