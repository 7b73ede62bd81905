"""Running the study's runs and reading back what each wrote.

Each run is trained and evaluated as `stalign.main` does it (`stages.run_stages`),
unless it was before: a run with report.json is skipped, one with checkpoints
continues from the latest, a pretraining run that reached its steps is reused,
and a run folder trained with other settings is refused, never mixed in. What
the study then reads of a run: its report.json, and its train_history.json
(the valid split's speech->text R@1 at every `eval.every_steps`, and the
pretraining runs' final character error rate).
"""

from collections.abc import Sequence
import json
import os
import time

import ml_collections

from stalign import checkpoints
from stalign import fs
from stalign import stages
from stalign import study_plan
from stalign import utils

# The evaluator figure the study's curves follow: its key in train_history.json's `evaluators`.
CURVE = "valid/retrieval.speech_to_text.recall_at_1"


def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def check_same_config(run: study_plan.Run) -> None:
  """Refuses a run folder whose saved config.json is not this run's: its results would mix in."""
  path = os.path.join(run.workdir, "config.json")
  if not fs.exists(path):
    return
  saved = utils.flatten_dict(json.loads(fs.read_text(path)))
  wanted = utils.flatten_dict(_config_json(run.config))
  differ = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
  if differ:
    shown = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:4])
    raise FileExistsError(
      f"{run.workdir} holds a run with other settings ({shown}"
      f"{'; ...' if len(differ) > 4 else ''}): use another --workdir, or delete that folder "
      "to train it anew"
    )


def trained_steps(run: study_plan.Run) -> int:
  """The step of the run's latest checkpoint (0 without one)."""
  if not fs.isdir(os.path.join(run.workdir, "checkpoints")):
    return 0
  mgr = checkpoints.manager(run.workdir, run.config.train.keep_checkpoints)
  step = mgr.latest_step()
  mgr.close()
  return step or 0


def _minutes(seconds: float) -> str:
  return f"{int(seconds // 60)}m{seconds % 60:02.0f}s"


def execute(run: study_plan.Run) -> tuple[str, bool]:
  """Trains (or resumes) and evaluates one run unless done before; (what happened, preempted)."""
  check_same_config(run)
  if run.evaluated and fs.exists(os.path.join(run.workdir, "report.json")):
    return "done before (report.json), skipped", False
  steps = run.config.train.steps
  done = trained_steps(run)
  if done >= steps:
    status = f"trained before ({steps} steps)" if run.evaluated else f"done before ({steps} steps)"
  else:
    start = time.perf_counter()
    summary = stages.run_stages(run.config, run.workdir, ["train"])["train"]
    resumed = f", resumed at step {done}" if done else ""
    status = (
      f"trained {summary['steps']} of {steps} steps in {_minutes(time.perf_counter() - start)}"
    )
    status += f"{resumed} (first step {summary['compile_s'] or 0:.0f} s)"
    if summary["preempted"]:
      return status + "; SIGTERM: stopped, rerun the same command to resume", True
  if run.evaluated:
    start = time.perf_counter()
    results = stages.run_stages(run.config, run.workdir, ["evaluate"])["evaluate"]
    r1 = results["retrieval"]["speech_to_text"]["recall_at_1"] if "retrieval" in results else None
    status += f", evaluated in {time.perf_counter() - start:.0f} s"
    status += "" if r1 is None else f": speech->text R@1 {r1:.3f}"
  return status, False


def evaluator_curve(run_workdir: str, key: str) -> list[tuple[int, float]]:
  """[(step, value)] of one evaluator figure on the valid split, from train_history.json.

  A resumed run evaluates the steps after its last checkpoint again; the
  value recorded last wins.
  """
  path = os.path.join(run_workdir, "train_history.json")
  history = json.loads(fs.read_text(path))
  if "evaluators" not in history:
    raise FileNotFoundError(
      f"{path} has no evaluator figures (`evaluators`): the run was trained by an older stalign; "
      "delete its folder to train it again"
    )
  latest = {entry["step"]: float(entry[key]) for entry in history["evaluators"] if key in entry}
  return sorted(latest.items())


def final_validation(run_workdir: str) -> dict:
  """The run's last validation (`valid_loss`, `valid_cer`, ...) in its train_history.json."""
  history = json.loads(fs.read_text(os.path.join(run_workdir, "train_history.json")))
  return max(history["valid"], key=lambda entry: entry["step"])


def collect(runs: Sequence[study_plan.Run]) -> tuple[dict, dict, dict]:
  """(reports, curves, pretraining CER) of finished runs, keyed as `study_stats.aggregate` takes."""
  reports, curves, pretrain = {}, {}, {}
  for run in runs:
    if not run.evaluated:
      cer = final_validation(run.workdir)["valid_cer"]
      pretrain[str(run.seed)] = {"steps": run.config.train.steps, "valid_cer": cer}
      continue
    key = (run.regime, run.family)
    reports.setdefault(key, {})[run.seed] = json.loads(
      fs.read_text(os.path.join(run.workdir, "report.json"))
    )
    points = evaluator_curve(run.workdir, CURVE)
    curves.setdefault(key, {})[run.seed] = [(run.offset + step, v) for step, v in points]
  return reports, curves, pretrain
