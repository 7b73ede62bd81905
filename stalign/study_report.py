"""The study's aggregates written out: study.json, study.md and its figures.

study.md states the setup in words, an overview of a few headline metrics,
then per loss family every metric per regime and each regime's paired
difference from the baseline; a bar chart per metric and the valid R@1 curves
go beside it as PNGs. The study notebook shows the same tables and figures
from study.json.
"""

from collections.abc import Mapping
import json
import os

from matplotlib.figure import Figure
import numpy as np

from stalign import fs
from stalign import study_plan

CURVE_FIGURE = "valid_r1"
OVERVIEW = (
  "s2t_r1",
  "t2s_r1",
  "real_librispeech_s2t_r1",
  "real_an4_s2t_r1",
  "zero_shot_intents",
  "zero_shot_fsdd_unseen",
  "probe_transfer",
)


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
  names = [n for n in OVERVIEW if n in study["metrics"]]  # Those the reports have.
  labels = [study["metrics"][n] for n in names]
  lines = [f"| cell | {' | '.join(labels)} |", "|---" * (len(names) + 1) + "|"]
  for cell, c in study["cells"].items():
    row = [_summary_text(c["metrics"].get(n), interval=False) for n in names]
    lines.append(f"| {cell} | {' | '.join(row)} |")
  return "\n".join(lines)


def markdown(study: Mapping) -> str:
  """study.md: the setup in words, an overview, then per family all metrics and paired tests."""
  b = study["budget"]
  regimes = sorted({c["regime"] for c in study["cells"].values()})
  families = sorted({c["family"] for c in study["cells"].values()})
  out = [
    f"# Regime study: {study['workdir']}\n",
    f"Every cell: {b['total_steps']} update steps of {b['batch_size']} utterances. "
    + (
      f"Regimes that start from ASR pretraining spend {b['pretrain_steps']} of them on the "
      f"CTC-only run of their seed (shared by both loss families) and fine-tune for "
      f"{b['finetune_steps']}. "
      if b["pretrain_steps"]
      else "No regime warm-starts from a pretraining run of the study's own. "
    )
    + "Seeds: "
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
        _summary_text(
          study["cells"].get(study_plan.cell_name(r, family), {}).get("metrics", {}).get(name)
        )
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
      m = (
        study["cells"].get(study_plan.cell_name(regime, family), {}).get("metrics", {}).get(metric)
      )
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
      curve = study["curves"].get(study_plan.cell_name(regime, family))
      if not curve or not curve["steps"]:
        continue
      for points in curve["per_seed"].values():
        ax.plot(*zip(*points), color=f"C{j}", alpha=0.3, lw=0.8)
      ax.plot(curve["steps"], curve["mean"], color=f"C{j}", marker="o", ms=3, label=regime)
    warm = any(changes.get("init_from") for changes in study["regimes"].values())
    if warm:
      pretrained = study["budget"]["pretrain_steps"]
      ax.axvline(pretrained, color="0.6", ls=":", lw=1, label="end of ASR pretraining")
    xlabel = "update step (pretraining included)" if warm else "update step"
    ax.set(title=f"loss family `{family}`", xlabel=xlabel)
    ax.legend(fontsize=8)
  axes[0].set_ylabel("valid speech->text R@1 (thin: seeds)")
  fig.tight_layout()
  return fig


def write(workdir: str, study: dict) -> None:
  """study.json, study.md and the PNG figures in `workdir` (`study["figures"]` names the PNGs)."""
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
