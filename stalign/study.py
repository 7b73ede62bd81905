r"""The regime study: do ASR pretraining and multitask CTC aid alignment, with either loss?

  python -m stalign.study --config=configs/study.py --workdir=runs/study
  python -m stalign.study --config=configs/study.py:quick --workdir=/tmp/study   # tiny, minutes

Trains every run of the grid that configs/study.py describes (regimes (a)-(d) x loss families
`ours` and `paper` x seeds, every cell on the same number of update steps), evaluates each with
the full suite (the `train` and `evaluate` stages of `stalign.main`, on the same utterances: one
data folder, or one per front end (configs/study_whisper.py), that the data stage builds if it is
missing) and aggregates the reports:

  WORKDIR/asr_pretrain/seed<k>/        CTC-only pretraining, shared by (b) and (d) of both families
  WORKDIR/<regime>-<family>/seed<k>/   one run folder, as stalign.main writes it (report.json, ...)
  WORKDIR/study.json, study.md         per cell mean, std and 95% t interval over seeds; each
                                       regime minus the baseline (a), seed by seed (paired t-test)
  WORKDIR/study_<metric>.png           one bar chart per headline metric; study_valid_r1.png: valid
                                       speech->text R@1 against update step (pretraining included)

Rerunning resumes: a run with report.json is skipped, a run with checkpoints continues from the
latest, a pretraining run that reached its steps is reused. A run folder trained with other
settings (say, before the recipe changed) is an error naming them, never mixed into the tables.
The figures are each run's final checkpoint on `eval.split`: the test split is reported, never
used to choose anything; the curves come from the valid split. Output: one line per run.

study.json (schema_version 1): `metrics` {name: label} of the headline metrics (METRICS);
`cells.<regime>-<family>` {regime, family, seeds, metrics.<name> {n, mean, std, ci95, values
{seed: value}}}, where names are the headline ones plus `probe_*.<task>` per probe task;
`paired.<family>.<regime>.<name>` {n, mean_diff, ci95, p_value} against `baseline`;
`curves.<cell>` {steps, mean, per_seed {seed: [[step, R@1]]}}; `budget` {total_steps,
pretrain_steps, finetune_steps, batch_size, curve_every_steps}; `seeds`, `split`,
`unseen_voices` (FSDD speakers no run trained on), `regimes` and `families` (what each changes
in the recipe), `pretrain` {seed: {steps, valid_cer}}, `runs` {run: folder}, `figures` {name:
PNG file}. None (null): a section the reports lack, or a figure that needs more seeds (std and
intervals need 2; p needs differences that vary).

The study's parts: `study_plan` (the grid and its checks), `study_runs` (running each run and
reading back what it wrote), `study_stats` (the statistics) and `study_report` (study.md and
the figures); this module runs them in turn.
"""

import os

from absl import app
from absl import flags
import jax
import ml_collections

from stalign import cli
from stalign import fs
from stalign import prepare
from stalign import study_plan
from stalign import study_report
from stalign import study_runs
from stalign import study_stats

SCHEMA_VERSION = 1

_CONFIG, _WORKDIR, _COMPILATION_CACHE = cli.define_run_flags(
  config_help="The study config (configs/study.py, or configs/study.py:quick for the tiny grid). "
  "Override any key with --config.KEY=VALUE: --config.train.steps (every cell's total), "
  "--config.study.pretrain_steps, --config.study.seeds, "
  "--config.study.families.paper.distill=mse.",
  workdir_help="Study folder: one run folder per cell and seed, study.json, study.md, plots.",
)


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Runs what is left of the study and writes its aggregates; None if SIGTERM stopped it."""
  study_plan.validate_study(config)
  runs = study_plan.plan(config, workdir)
  is_main = jax.process_index() == 0
  for data_config in study_plan.data_configs(runs):
    summaries = prepare.prepare(data_config)
    if is_main:
      sizes = ", ".join(f"{split} {s['written']}" for split, s in summaries.items())
      print(f"data: {data_config.data_dir} ({sizes} utterances)", flush=True)
  for i, run in enumerate(runs, 1):
    status, preempted = study_runs.execute(run)
    if is_main:
      print(f"[{i}/{len(runs)}] {run.name}: {status}", flush=True)
    if preempted:
      return None
  reports, curves, pretrain = study_runs.collect(runs)
  study = study_stats.aggregate(reports, curves, config.study.baseline)
  study.update(
    schema_version=SCHEMA_VERSION,
    workdir=fs.abspath(workdir),
    budget={
      "total_steps": config.train.steps,
      "pretrain_steps": config.study.pretrain_steps,
      "finetune_steps": config.train.steps - config.study.pretrain_steps,
      "batch_size": config.input.batch_size,
      "curve_every_steps": config.eval.every_steps,
    },
    seeds=study_plan.seeds(config),
    split=config.eval.split,
    baseline=config.study.baseline,
    regimes=config.study.regimes.to_dict(),
    families=config.study.families.to_dict(),
    pretrain=pretrain,
    runs={run.name: os.path.relpath(run.workdir, workdir) for run in runs},
  )
  if is_main:
    study_report.write(workdir, study)
  return study


def main(argv: list[str]) -> None:
  cli.check_no_arguments(argv, cli.CONFIG_HINT)
  cli.use_compilation_cache(_COMPILATION_CACHE.value)
  if "study" not in _CONFIG.value:
    raise app.UsageError("--config has no `study` keys: use configs/study.py (or :quick)")
  study = run_study(_CONFIG.value, _WORKDIR.value)
  if study is not None and jax.process_index() == 0:
    print("\n" + study_report.overview(study))
    print(f"\nstudy: {os.path.join(_WORKDIR.value, 'study.md')}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
