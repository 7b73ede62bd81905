"""The study's statistics: headline metrics per cell over seeds, paired tests, mean curves.

Pure functions of plain dicts (report.json contents and curves), so they are
tested on hand-computed numbers. Over seeds: mean, sample std and a 95%
Student-t interval; each regime against the baseline, seed by seed (a paired
t-test: pairing removes what a seed does to both runs).
"""

from collections.abc import Mapping
from collections.abc import Sequence
import math

import numpy as np
from scipy import stats

from stalign import study_plan

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
  # The report's "real speech, unseen speakers" (configs/study_whisper.py's data has them).
  "real_librispeech_s2t_r1": (
    "unseen LibriSpeech readers, speech->text R@1",
    "real_speech.domains.librispeech.retrieval.speech_to_text.recall_at_1",
  ),
  "real_an4_s2t_r1": (
    "unseen AN4 speakers, speech->text R@1",
    "real_speech.domains.an4.retrieval.speech_to_text.recall_at_1",
  ),
  "probe_speech": ("probe speech (task mean)", "probing.<task>.speech"),
  "probe_text": ("probe text (task mean)", "probing.<task>.text"),
  "probe_transfer": ("probe text->speech (task mean)", "probing.<task>.text_to_speech_transfer"),
}


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
    cells[study_plan.cell_name(regime, family)] = {
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
    # The headline metrics some report has (a study without real speech has no real-speech one).
    "metrics": {
      name: label
      for name, (label, _) in METRICS.items()
      if any(m.get(name) is not None for by_seed in per_run.values() for m in by_seed.values())
    },
    "cells": cells,
    "paired": comparisons,
    "curves": {study_plan.cell_name(*k): mean_curve(v) for k, v in sorted(curves.items())},
    "unseen_voices": unseen,
  }
