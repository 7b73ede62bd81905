r"""stalign's one entry point: data -> teacher embeddings -> training -> evaluation report.

  python -m stalign.main --config=configs/demo.py --workdir=runs/demo
  python -m stalign.main --config=configs/demo.py:tiny --workdir=/tmp/tiny \
      --config.train.steps=50 --config.loss.ctc_weight=0

Every stage is resumable: rerunning the same command reuses finished data,
resumes training from the workdir's latest checkpoint and rewrites the report.
Output is a progress bar and one summary line per stage; `--verbosity=0` adds
the INFO log (resolved config, mesh, batch arithmetic, checkpoints).
"""

import os

# Before TensorFlow loads: its C++ side prints INFO lines (oneDNN notice) at import otherwise.
# oneDNN only matters to TF float kernels, and TF only parses and pads data here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from stalign import cli
from stalign import config as config_lib
from stalign import evaluate
from stalign import fs
from stalign import prepare
from stalign import report
from stalign import train
from stalign.data import sources

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Python config file with get_config(arg); `path.py:arg` passes arg (e.g. configs/demo.py:tiny). "
  "Override any key with --config.KEY=VALUE; unknown keys are an error.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory: checkpoints, TensorBoard logs, report."
)
_STAGES = flags.DEFINE_list(
  "stages",
  ["data", "train", "evaluate"],
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
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache",
  os.path.expanduser("~/.cache/stalign/jax"),
  "Persistent XLA compilation cache: a rerun skips recompiling each bucket shape. '' disables it.",
)


def _save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    fs.makedirs(workdir)
    with fs.atomic_write(os.path.join(workdir, "config.json")) as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _check_flags(argv: list[str]) -> None:
  """Refuses bad flags before anything runs or `config.json` is written to the workdir."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE")
  unknown = set(_STAGES.value) - {"data", "train", "evaluate"}
  if unknown:
    raise app.UsageError(f"unknown --stages {sorted(unknown)}; use data, train, evaluate")


def main(argv):
  _check_flags(argv)
  if _COMPILATION_CACHE.value and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE.value)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config, workdir = config_lib.validate(_CONFIG.value), _WORKDIR.value
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
  _save_config(config, workdir)
  is_main = jax.process_index() == 0
  if "data" in _STAGES.value:
    summaries = prepare.prepare(config)
    if is_main:
      print(
        "data: "
        + ", ".join(
          f"{split} {s['written']} utterances ({s['hours']:.2f} h)"
          for split, s in summaries.items()
        )
        + f" in {config.data_dir}"
      )
  if "train" in _STAGES.value:
    summary = train.train_and_evaluate(config, workdir)
    if is_main:
      valid = ", ".join(f"{k} {v:.3f}" for k, v in summary["valid"].items() if k != "step")
      print(
        f"train: step {summary['steps']} of {config.train.steps}"
        f"{' (preempted: rerun to resume)' if summary['preempted'] else ''}; {valid}"
      )
  if "evaluate" in _STAGES.value:
    # Every process evaluates (restoring a checkpoint is a collective for orbax) and process 0
    # writes the report; the evaluation itself runs on each process's own devices.
    results = evaluate.evaluate(config, workdir)
    if is_main:
      print(report.headline(results))
      print(f"\nreport: {os.path.join(workdir, 'report.md')}")


def run():
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)


if __name__ == "__main__":
  run()
