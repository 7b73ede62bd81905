r"""The regime study: do ASR pretraining and multitask CTC aid alignment, with either loss?

  python -m stalign.study --config=configs/study.py --workdir=runs/study
  python -m stalign.study --config=configs/study.py:quick --workdir=/tmp/study   # tiny, minutes

Trains every run of the grid that configs/study.py describes (regimes (a)-(d) x loss families
`ours` and `paper` x seeds, every cell on the same number of update steps), evaluates each with
the full suite (the `train` and `evaluate` stages of `stalign.main`, on one shared data_dir that
the data stage builds if it is missing) and aggregates the reports:

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
"""

# ruff: noqa: E402  (as a CLI, TensorFlow's logging is set up before anything imports it)
import os

if __name__ == "__main__":  # Quiet TensorFlow's C++ side before it loads (see main.py).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import json
import math
import time

from absl import app
from absl import flags
from absl import logging
import jax
from matplotlib.figure import Figure
import ml_collections
from ml_collections import config_flags
import numpy as np
from scipy import stats
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from stalign import checkpoints
from stalign import cli
from stalign import config as config_lib
from stalign import evaluate
from stalign import fs
from stalign import prepare
from stalign import train
from stalign import utils
from stalign.data import tfrecords

SCHEMA_VERSION = 1
PRETRAIN = "asr_pretrain"  # Folder of the shared pretraining runs.
# Sections whose settings decide the data folder: every run of a study reads the same one.
DATA_KEYS = ("data_dir", "corpus", "data", "features")
CURVE_TAG = "valid/retrieval.speech_to_text.recall_at_1"  # What train.py writes to TensorBoard.
CURVE_FIGURE = "valid_r1"
# Headline metrics: name -> (label, dotted key in report.json). The probe ones average the
# report's probe tasks (`probing.<task>.<key>`); study.json has each task too.
METRICS = {
  "s2t_r1": ("speech->text R@1", "retrieval.speech_to_text.recall_at_1"),
  "s2t_r10": ("speech->text R@10", "retrieval.speech_to_text.recall_at_10"),
  "t2s_r1": ("text->speech R@1", "retrieval.text_to_speech.recall_at_1"),
  "t2s_r10": ("text->speech R@10", "retrieval.text_to_speech.recall_at_10"),
  "paired_cosine": ("paired cosine", "retrieval.paired_cosine"),
  "unpaired_cosine": ("unpaired cosine", "retrieval.unpaired_cosine"),
  "modality_gap": ("modality gap", "geometry.modality_gap"),
  "zero_shot_intents": ("zero-shot, held-out intents", "zero_shot.synthetic.accuracy"),
  "zero_shot_fsdd_unseen": ("zero-shot FSDD, unseen voices", "zero_shot.fsdd.held_out_accuracy"),
  "probe_speech": ("probe speech (task mean)", "probing.<task>.speech"),
  "probe_text": ("probe text (task mean)", "probing.<task>.text"),
  "probe_transfer": ("probe text->speech (task mean)", "probing.<task>.text_to_speech_transfer"),
}

# ---------------------------------------------------------------------- the grid


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the grid: where it lives, its full config, and how it is evaluated."""

  name: str  # "a_distill-ours/seed0", "asr_pretrain/seed0"
  workdir: str
  config: ml_collections.ConfigDict
  regime: str  # "" for pretraining.
  family: str  # "" for pretraining.
  seed: int
  offset: int  # Update steps before this run's first (pretraining): where its curve starts.

  @property
  def evaluated(self) -> bool:
    return bool(self.regime)


def cell_name(regime: str, family: str) -> str:
  return f"{regime}-{family}"


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  return [config.seed + i for i in range(config.study.seeds)]


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks the `study` keys against the recipe; returns `config` or raises ConfigError."""
  s = config.study
  if s.seeds < 1:
    raise config_lib.ConfigError(f"study.seeds={s.seeds} must be >= 1")
  if not 0 < s.pretrain_steps < config.train.steps:
    raise config_lib.ConfigError(
      f"study.pretrain_steps={s.pretrain_steps} must be in 1..train.steps-1 "
      f"({config.train.steps - 1}): it is part of every cell's train.steps"
    )
  if config.train.warmup_steps >= config.train.steps - s.pretrain_steps:
    raise config_lib.ConfigError(
      f"train.warmup_steps={config.train.warmup_steps} outlasts the fine-tuning of (b) and (d) "
      f"(train.steps - study.pretrain_steps = {config.train.steps - s.pretrain_steps})"
    )
  if s.baseline not in s.regimes:
    raise config_lib.ConfigError(
      f"study.baseline={s.baseline!r} is not a regime; use one of {sorted(s.regimes)}"
    )
  if not s.families:
    raise config_lib.ConfigError("study.families is empty: name at least one loss family")
  if not config.eval.every_steps or "retrieval" not in config.eval.during_training:
    raise config_lib.ConfigError(
      "the curves need eval.every_steps > 0 and 'retrieval' in eval.during_training"
    )
  for where, changes in [("study.pretrain", s.pretrain)] + [
    (f"study.regimes.{name}", c) for name, c in s.regimes.items()
  ]:
    shared = sorted(set(changes) & set(DATA_KEYS))
    if shared:
      raise config_lib.ConfigError(
        f"{where} changes {shared}: every run of a study reads one data folder, so the data "
        "settings are the recipe's (top-level keys)"
      )
  return config


def _apply(node: ml_collections.ConfigDict, changes: ml_collections.ConfigDict, where: str) -> None:
  """Sets each key of the nested `changes` in `node`; a key `node` lacks is an error."""
  for key, value in changes.items():
    if key not in node:
      raise config_lib.ConfigError(f"{where}.{key} is not a key of the run config")
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      _apply(node[key], value, f"{where}.{key}")
    else:
      node[key] = value


def recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run config every run starts from: the study config without its `study` keys."""
  c = ml_collections.ConfigDict(config.to_dict())
  del c["study"]
  return c


def plan(config: ml_collections.ConfigDict, workdir: str) -> list[Run]:
  """Every run of the study, in order: per seed its pretraining run, then one run per cell.

  Seed-major, so that a study stopped half-way already holds whole seeds to compare. Each
  run's config is built and `stalign.config.validate`d here, before anything trains. The
  pretraining runs exist only when a regime warm-starts.
  """
  s = config.study
  total, pretrain_steps = config.train.steps, s.pretrain_steps
  warm = any(r.get("init_from") for r in s.regimes.values())
  runs = []
  for seed in seeds(config):
    pretrain_dir = os.path.join(workdir, PRETRAIN, f"seed{seed}")
    if warm:
      c = recipe(config)
      _apply(c, s.pretrain, "study.pretrain")
      c.seed, c.train.steps = seed, pretrain_steps
      c.eval.every_steps = 0  # Retrieval is at chance without an embedding loss: no curve.
      runs.append(Run(f"{PRETRAIN}/seed{seed}", pretrain_dir, c, "", "", seed, 0))
    for regime in sorted(s.regimes):
      for family in sorted(s.families):
        c = recipe(config)
        _apply(c, s.regimes[regime], f"study.regimes.{regime}")
        _apply(c.loss, s.families[family], f"study.families.{family}")
        c.seed = seed
        offset = 0
        if c.init_from:  # The regime warm-starts: from this seed's pretraining run.
          c.init_from, c.train.steps, offset = pretrain_dir, total - pretrain_steps, pretrain_steps
        cell = cell_name(regime, family)
        run_dir = os.path.join(workdir, cell, f"seed{seed}")
        runs.append(Run(f"{cell}/seed{seed}", run_dir, c, regime, family, seed, offset))
  for run in runs:
    try:
      config_lib.validate(run.config)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"{run.name}: {e}") from e
  return runs


# ------------------------------------------------------------------- running it


def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def check_same_config(run: Run) -> None:
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


def trained_steps(run: Run) -> int:
  """The step of the run's latest checkpoint (0 without one)."""
  if not fs.isdir(os.path.join(run.workdir, "checkpoints")):
    return 0
  mgr = checkpoints.manager(run.workdir, run.config.train.keep_checkpoints)
  step = mgr.latest_step()
  mgr.close()
  return step or 0


def _minutes(seconds: float) -> str:
  return f"{int(seconds // 60)}m{seconds % 60:02.0f}s"


def execute(run: Run) -> tuple[str, bool]:
  """Trains (or resumes) and evaluates one run unless done before; (what happened, preempted)."""
  check_same_config(run)
  if run.evaluated and fs.exists(os.path.join(run.workdir, "report.json")):
    return "done before (report.json), skipped", False
  steps = run.config.train.steps
  done = trained_steps(run)
  if done >= steps:
    status = f"trained before ({steps} steps)" if run.evaluated else f"done before ({steps} steps)"
  else:
    if jax.process_index() == 0:
      fs.makedirs(run.workdir)
      with fs.atomic_write(os.path.join(run.workdir, "config.json")) as f:
        f.write(run.config.to_json_best_effort(indent=2, sort_keys=True))
    start = time.perf_counter()
    summary = train.train_and_evaluate(run.config, run.workdir)
    resumed = f", resumed at step {done}" if done else ""
    status = (
      f"trained {summary['steps']} of {steps} steps in {_minutes(time.perf_counter() - start)}"
    )
    status += f"{resumed} (first step {summary['compile_s'] or 0:.0f} s)"
    if summary["preempted"]:
      return status + "; SIGTERM: stopped, rerun the same command to resume", True
  if run.evaluated:
    start = time.perf_counter()
    results = evaluate.evaluate(run.config, run.workdir)
    r1 = results["retrieval"]["speech_to_text"]["recall_at_1"] if "retrieval" in results else None
    status += f", evaluated in {time.perf_counter() - start:.0f} s"
    status += "" if r1 is None else f": speech->text R@1 {r1:.3f}"
  return status, False


def read_scalars(run_workdir: str, tag: str) -> list[tuple[int, float]]:
  """[(step, value)] of one TensorBoard scalar of a run, in step order.

  A resumed run writes a new event file and repeats the steps after its last
  checkpoint; the value written last (by wall time) wins. Event files are
  framed as TFRecords and read through stalign.fs, as the data is; a file cut
  short by a kill keeps the records before the cut.
  """
  latest = {}  # step -> (wall time, value)
  for path in fs.glob(os.path.join(run_workdir, "tensorboard"), "events.out.tfevents.*"):
    try:
      for raw in tfrecords.read_raw(path):
        event = event_pb2.Event.FromString(raw)
        for v in event.summary.value:
          if v.tag == tag and event.wall_time >= latest.get(event.step, (-1.0,))[0]:
            latest[event.step] = (event.wall_time, float(tensor_util.make_ndarray(v.tensor)))
    except ValueError:
      logging.warning("%s ends in a partial record (a killed run); read up to it", path)
  return [(step, value) for step, (_, value) in sorted(latest.items())]


# ---------------------------------------------------------------- aggregation


def _lookup(tree: Mapping, dotted: str):
  for key in dotted.split("."):
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def metrics_of(report: Mapping) -> dict[str, float | None]:
  """A report's headline metrics (None where its section is absent) and each probe task's."""
  out = {}
  for name, (_, key) in METRICS.items():
    if "<task>" in key:
      field = key.rsplit(".", 1)[1]
      tasks = {t: p[field] for t, p in sorted(report.get("probing", {}).items())}
      out[name] = float(np.mean(list(tasks.values()))) if tasks else None
      out.update({f"{name}.{t}": float(v) for t, v in tasks.items()})
    else:
      value = _lookup(report, key)
      out[name] = None if value is None else float(value)
  return out


def _ordered(names: set[str]) -> list[str]:
  """Headline metrics in METRICS order, each followed by its per-task entries."""
  return sorted(names, key=lambda n: (list(METRICS).index(n.split(".")[0]), n))


def _interval(mean: float, sd: float, n: int) -> list[float]:
  half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
  return [mean - half, mean + half]


def summarize(values: Sequence[float]) -> dict:
  """Mean, sample std and 95% Student-t interval of the mean over seeds (std/interval need 2)."""
  n = len(values)
  if not n:
    return {"n": 0, "mean": None, "std": None, "ci95": None}
  mean = float(np.mean(values))
  if n < 2:
    return {"n": 1, "mean": mean, "std": None, "ci95": None}
  sd = float(np.std(values, ddof=1))
  return {"n": n, "mean": mean, "std": sd, "ci95": _interval(mean, sd, n)}


def paired(baseline: Mapping[int, float | None], other: Mapping[int, float | None]) -> dict:
  """`other` - `baseline` over the seeds both have: mean, its 95% t interval, paired t-test p.

  Pairing by seed removes what a seed does to both runs (the shared data
  order; for (b) and (d), the pretraining run). p is two-sided; it and the
  interval need two seeds, and p is undefined (None) when the differences do
  not vary (std under 1e-9: equal up to rounding, as the teacher's text probes are).
  """
  common = sorted(k for k in baseline.keys() & other.keys() if None not in (baseline[k], other[k]))
  diffs = [other[k] - baseline[k] for k in common]
  out = {"n": len(diffs), "mean_diff": float(np.mean(diffs)) if diffs else None}
  out["ci95"] = out["p_value"] = None
  n = len(diffs)
  if n >= 2:
    sd = float(np.std(diffs, ddof=1))
    out["ci95"] = _interval(out["mean_diff"], sd, n)
    if sd > 1e-9:
      t = out["mean_diff"] / (sd / math.sqrt(n))
      out["p_value"] = float(2 * stats.t.sf(abs(t), n - 1))
  return out


def mean_curve(per_seed: Mapping[int, Sequence[tuple[int, float]]]) -> dict:
  """Per-seed curves and their mean at the steps every seed has."""
  steps = sorted(set.intersection(*(set(dict(c)) for c in per_seed.values()))) if per_seed else []
  return {
    "steps": steps,
    "mean": [float(np.mean([dict(c)[s] for c in per_seed.values()])) for s in steps],
    "per_seed": {str(k): [list(p) for p in c] for k, c in sorted(per_seed.items())},
  }


def aggregate(
  reports: Mapping[tuple[str, str], Mapping[int, Mapping]],
  curves: Mapping[tuple[str, str], Mapping[int, Sequence[tuple[int, float]]]],
  baseline: str,
) -> dict:
  """The study's figures from its runs' reports: a pure function of plain dicts.

  Args:
    reports: {(regime, family): {seed: report.json as a dict}}.
    curves: {(regime, family): {seed: [(update step, valid R@1)]}}, steps counted
      from the start of the cell's budget (pretraining included).
    baseline: the regime every other one is compared with, within each family.

  Returns:
    {"cells": {cell: {regime, family, seeds, metrics: {name: summary + per-seed values}}},
     "paired": {family: {regime: {metric: paired(...)}}}, "curves": {cell: mean_curve(...)},
     "unseen_voices": FSDD speakers no run trained on, "metrics": {headline name: label}}.
  """
  per_run = {
    cell: {seed: metrics_of(r) for seed, r in by_seed.items()} for cell, by_seed in reports.items()
  }
  cells = {}
  for (regime, family), by_seed in sorted(per_run.items()):
    names = _ordered({n for m in by_seed.values() for n in m})
    cells[cell_name(regime, family)] = {
      "regime": regime,
      "family": family,
      "seeds": sorted(by_seed),
      "metrics": {
        name: {
          **summarize([m[name] for m in by_seed.values() if m.get(name) is not None]),
          "values": {str(s): m.get(name) for s, m in sorted(by_seed.items())},
        }
        for name in names
      },
    }
  comparisons = {}
  for (regime, family), by_seed in sorted(per_run.items()):
    base = per_run.get((baseline, family))
    if regime == baseline or base is None:
      continue
    names = _ordered({n for m in by_seed.values() for n in m})
    comparisons.setdefault(family, {})[regime] = {
      name: paired(
        {s: m.get(name) for s, m in base.items()}, {s: m.get(name) for s, m in by_seed.items()}
      )
      for name in names
    }
  unseen = sorted(
    {
      speaker
      for by_seed in reports.values()
      for r in by_seed.values()
      for speaker in _lookup(r, "zero_shot.fsdd.held_out_speakers") or ()
    }
  )
  return {
    "metrics": {name: label for name, (label, _) in METRICS.items()},
    "cells": cells,
    "paired": comparisons,
    "curves": {cell_name(*k): mean_curve(v) for k, v in sorted(curves.items())},
    "unseen_voices": unseen,
  }


# ---------------------------------------------------------------------- writing

OVERVIEW = ("s2t_r1", "t2s_r1", "zero_shot_intents", "zero_shot_fsdd_unseen", "probe_transfer")


def _summary_text(m: Mapping | None, interval: bool = True) -> str:
  if not m or m["mean"] is None:
    return "-"
  text = f"{m['mean']:.3f}"
  if m["std"] is not None:
    text += f" ± {m['std']:.3f}"
    if interval:
      text += f" [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"
  return text


def _paired_text(p: Mapping | None) -> str:
  if not p or p["mean_diff"] is None:
    return "-"
  text = f"{p['mean_diff']:+.3f}"
  if p["ci95"] is not None:
    text += f" [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
  return text + ("" if p["p_value"] is None else f" p={p['p_value']:.3f}")


def overview(study: Mapping) -> str:
  """A few headline metrics per cell, mean ± std over seeds (what the CLI prints last)."""
  labels = [study["metrics"][n] for n in OVERVIEW]
  lines = [f"| cell | {' | '.join(labels)} |", "|---" * (len(OVERVIEW) + 1) + "|"]
  for cell, c in study["cells"].items():
    row = [_summary_text(c["metrics"].get(n), interval=False) for n in OVERVIEW]
    lines.append(f"| {cell} | {' | '.join(row)} |")
  return "\n".join(lines)


def markdown(study: Mapping) -> str:
  """study.md: the setup in words, an overview, then per family all metrics and paired tests."""
  b = study["budget"]
  regimes = sorted({c["regime"] for c in study["cells"].values()})
  families = sorted({c["family"] for c in study["cells"].values()})
  out = [
    f"# Regime study: {study['workdir']}\n",
    f"Every cell: {b['total_steps']} update steps of {b['batch_size']} utterances. Regimes that "
    f"start from ASR pretraining spend {b['pretrain_steps']} of them on the CTC-only run of their "
    f"seed (shared by both loss families) and fine-tune for {b['finetune_steps']}. Seeds: "
    f"{', '.join(map(str, study['seeds']))}. Figures: each run's final checkpoint on the "
    f"{study['split']} split, mean ± sample std over seeds and [95% Student-t interval]; nothing "
    f"is selected on it. FSDD unseen voices: {', '.join(study['unseen_voices']) or '-'}. "
    "Cosines and the modality gap are measured in the space each run was trained for (raw "
    "teacher embeddings for a family without `centre_targets`, centred ones otherwise): compare "
    "them within a family. study.json holds every figure per seed (keys: stalign/study.py).\n",
    "Loss families (changes to `loss` on top of each regime): "
    + "; ".join(
      f"`{f}`: {', '.join(f'{k}={v}' for k, v in sorted(ch.items())) or 'the recipe as it is'}"
      for f, ch in sorted(study["families"].items())
    )
    + ".\n",
    overview(study) + "\n",
  ]
  for family in families:
    out.append(f"## Loss family `{family}`\n")
    out.append(f"| metric | {' | '.join(regimes)} |")
    out.append("|---" * (len(regimes) + 1) + "|")
    for name, label in study["metrics"].items():
      row = [
        _summary_text(study["cells"].get(cell_name(r, family), {}).get("metrics", {}).get(name))
        for r in regimes
      ]
      out.append(f"| {label} | {' | '.join(row)} |")
    others = sorted(study["paired"].get(family, {}))
    if others:
      out.append(
        f"\nEach regime minus `{study['baseline']}`, seed by seed: mean difference "
        "[95% interval], p of a two-sided paired t-test.\n"
      )
      out.append(f"| metric | {' | '.join(others)} |")
      out.append("|---" * (len(others) + 1) + "|")
      for name, label in study["metrics"].items():
        row = [_paired_text(study["paired"][family][r].get(name)) for r in others]
        out.append(f"| {label} | {' | '.join(row)} |")
    out.append("")
  if study["pretrain"]:
    cer = ", ".join(f"seed {s}: {v['valid_cer']:.3f}" for s, v in study["pretrain"].items())
    out.append(
      f"ASR pretraining, valid character error rate after {b['pretrain_steps']} steps: {cer}.\n"
    )
  for name, file in study.get("figures", {}).items():
    out.append(f"![{name}]({file})\n")
  return "\n".join(out)


def bar_figure(study: Mapping, metric: str) -> Figure:
  """One metric per cell: bars of the seed mean, 95% interval, a dot per seed."""
  regimes = sorted({c["regime"] for c in study["cells"].values()})
  families = sorted({c["family"] for c in study["cells"].values()})
  label = study["metrics"][metric]
  width = 0.8 / len(families)
  fig = Figure(figsize=(1.6 * len(regimes) + 2, 4))
  ax = fig.subplots()
  for i, family in enumerate(families):
    for j, regime in enumerate(regimes):
      m = study["cells"].get(cell_name(regime, family), {}).get("metrics", {}).get(metric)
      if not m or m["mean"] is None:
        continue
      x = j + (i - (len(families) - 1) / 2) * width
      ax.bar(x, m["mean"], width, color=f"C{i}", label=family if j == regimes.index(regime) else "")
      if m["ci95"] is not None:
        low, high = m["ci95"]
        ax.errorbar(x, m["mean"], [[m["mean"] - low], [high - m["mean"]]], color="k", capsize=4)
      seeds_ = [v for v in m["values"].values() if v is not None]
      ax.scatter([x] * len(seeds_), seeds_, s=10, color="k", zorder=3)
  handles, names = ax.get_legend_handles_labels()
  unique = dict(zip(names, handles))
  ax.legend([unique[f] for f in families if f in unique], [f for f in families if f in unique],
            title="loss", fontsize=8)  # fmt: skip
  ax.set_xticks(range(len(regimes)), regimes)
  ax.set(ylabel=label, title=f"{label}: seed mean, 95% interval, seeds (dots)")
  fig.tight_layout()
  return fig


def curve_figure(study: Mapping) -> Figure:
  """Valid speech->text R@1 against update step, one panel per loss family, one colour per regime.

  Steps count the cell's whole budget, so a warm-started regime's curve begins where its
  pretraining ended: every curve ends at the same step.
  """
  regimes = sorted({c["regime"] for c in study["cells"].values()})
  families = sorted({c["family"] for c in study["cells"].values()})
  fig = Figure(figsize=(5 * len(families), 4))
  axes = np.atleast_1d(fig.subplots(1, len(families), sharey=True))
  for ax, family in zip(axes, families):
    for j, regime in enumerate(regimes):
      curve = study["curves"].get(cell_name(regime, family))
      if not curve or not curve["steps"]:
        continue
      for points in curve["per_seed"].values():
        ax.plot(*zip(*points), color=f"C{j}", alpha=0.3, lw=0.8)
      ax.plot(curve["steps"], curve["mean"], color=f"C{j}", marker="o", ms=3, label=regime)
    if any(changes.get("init_from") for changes in study["regimes"].values()):
      pretrained = study["budget"]["pretrain_steps"]
      ax.axvline(pretrained, color="0.6", ls=":", lw=1, label="end of ASR pretraining")
    ax.set(title=f"loss family `{family}`", xlabel="update step (pretraining included)")
    ax.legend(fontsize=8)
  axes[0].set_ylabel("valid speech->text R@1 (thin: seeds)")
  fig.tight_layout()
  return fig


def write(workdir: str, study: dict) -> None:
  """study.json, study.md and the PNG figures in `workdir`."""
  figures = {name: bar_figure(study, name) for name in study["metrics"]}
  figures[CURVE_FIGURE] = curve_figure(study)
  study["figures"] = {}
  for name, fig in figures.items():
    file = f"study_{name}.png"
    with fs.atomic_write(os.path.join(workdir, file), "wb") as f:
      fig.savefig(f, format="png", dpi=100)
    study["figures"][name] = file
  with fs.atomic_write(os.path.join(workdir, "study.json")) as f:
    json.dump(study, f, indent=1, sort_keys=True)
  with fs.atomic_write(os.path.join(workdir, "study.md")) as f:
    f.write(markdown(study))


# -------------------------------------------------------------------- the study


def collect(runs: Sequence[Run]) -> tuple[dict, dict, dict]:
  """(reports, curves, pretraining CER) of finished runs, keyed as `aggregate` takes them."""
  reports, curves, pretrain = {}, {}, {}
  for run in runs:
    if not run.evaluated:
      cer = read_scalars(run.workdir, "valid_cer")
      pretrain[str(run.seed)] = {"steps": run.config.train.steps, "valid_cer": cer[-1][1]}
      continue
    key = (run.regime, run.family)
    reports.setdefault(key, {})[run.seed] = json.loads(
      fs.read_text(os.path.join(run.workdir, "report.json"))
    )
    points = read_scalars(run.workdir, CURVE_TAG)
    curves.setdefault(key, {})[run.seed] = [(run.offset + step, v) for step, v in points]
  return reports, curves, pretrain


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Runs what is left of the study and writes its aggregates; None if SIGTERM stopped it."""
  validate(config)
  runs = plan(config, workdir)
  is_main = jax.process_index() == 0
  summaries = prepare.prepare(recipe(config))
  if is_main:
    sizes = ", ".join(f"{split} {s['written']}" for split, s in summaries.items())
    print(f"data: {config.data_dir} ({sizes} utterances)", flush=True)
  for i, run in enumerate(runs, 1):
    status, preempted = execute(run)
    if is_main:
      print(f"[{i}/{len(runs)}] {run.name}: {status}", flush=True)
    if preempted:
      return None
  reports, curves, pretrain = collect(runs)
  study = aggregate(reports, curves, config.study.baseline)
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
    seeds=seeds(config),
    split=config.eval.split,
    baseline=config.study.baseline,
    regimes=config.study.regimes.to_dict(),
    families=config.study.families.to_dict(),
    pretrain=pretrain,
    runs={run.name: os.path.relpath(run.workdir, workdir) for run in runs},
  )
  if is_main:
    write(workdir, study)
  return study


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE")
  f = flags.FLAGS
  if f.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", f.compilation_cache)
  if "study" not in f.config:
    raise app.UsageError("--config has no `study` keys: use configs/study.py (or :quick)")
  study = run_study(f.config, f.workdir)
  if study is not None and jax.process_index() == 0:
    print("\n" + overview(study))
    print(f"\nstudy: {os.path.join(f.workdir, 'study.md')}")


if __name__ == "__main__":
  # Defined here, not at import: the study notebook imports this module for its tables and plots.
  config_flags.DEFINE_config_file(
    "config",
    None,
    "The study config (configs/study.py, or configs/study.py:quick for the tiny grid). Override "
    "any key with --config.KEY=VALUE: --config.train.steps (every cell's total), "
    "--config.study.pretrain_steps, --config.study.seeds, "
    "--config.study.families.paper.distill=mse.",
    lock_config=True,
  )
  flags.DEFINE_string(
    "workdir", None, "Study folder: one run folder per cell and seed, study.json, study.md, plots."
  )
  flags.DEFINE_string(
    "compilation_cache",
    os.path.expanduser("~/.cache/stalign/jax"),
    "Persistent XLA compilation cache, shared with stalign.main; '' disables it.",
  )
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
