"""The run report: `report.json` (stable schema, docs/report_schema.md), `report.md` and plots.

`headline` is the short table `make demo` prints; `write` adds every section
in detail and, given the split's embeddings, the figures (PNG, beside the
report): a speech x text similarity matrix, a PCA map of both modalities and
probe accuracies per task and per student layer. `report.json` is the run's
own evaluation; an evaluation on another set is written under another name
(`NAME.json`, `NAME.md`, `NAME_similarity.png`, ...), so none overwrites another.
"""

import json
import os
import re

# Figures are built with matplotlib's object API, not pyplot: no global backend
# or figure registry, so writing a report works on headless machines and
# changes nothing for a notebook that imports this module.
from matplotlib.figure import Figure
import numpy as np

from stalign import fs
from stalign.utils import unit

SCHEMA_VERSION = 1
DEFAULT_NAME = "report"  # The run's own evaluation.
HEADLINE_PROBES = ("intent", "topic", "digit", "voice")  # Shown in the headline when present.
SIMILARITY_SAMPLE = 32


def _rows(results: dict) -> list[tuple[str, str]]:
  rows = []
  r = results.get("retrieval")
  if r:
    for direction in ("speech_to_text", "text_to_speech"):
      d = r[direction]
      rows.append(
        (
          f"{direction.replace('_', ' ')} R@1 / R@5 / R@10",
          f"{d['recall_at_1']:.3f} / {d['recall_at_5']:.3f} / {d['recall_at_10']:.3f}"
          f"  (gallery {d['gallery']}, median rank {d['median_rank']:.0f})",
        )
      )
    rows.append(
      ("paired / unpaired cosine", f"{r['paired_cosine']:.3f} / {r['unpaired_cosine']:.3f}")
    )
    rows.append(("gallery difficulty (mean NN teacher cosine)", f"{r['gallery_difficulty']:.3f}"))
  g = results.get("geometry")
  if g:
    rows.append(("modality gap / alignment", f"{g['modality_gap']:.3f} / {g['alignment']:.3f}"))
    rows.append(
      ("uniformity speech / text", f"{g['uniformity_speech']:.3f} / {g['uniformity_text']:.3f}")
    )
  zs = results.get("zero_shot", {})
  if "synthetic" in zs:
    s = zs["synthetic"]
    rows.append(
      (
        "zero-shot held-out intents (synthetic)",
        f"{s['accuracy']:.3f}  (chance {s['chance']:.3f}, {s['utterances']} utterances; "
        f"among all intents {s['all_intents']['accuracy']:.3f})",
      )
    )
  if "fsdd" in zs:
    f = zs["fsdd"]
    held = (
      ""
      if f["held_out_accuracy"] is None
      else f"; held out {', '.join(f['held_out_speakers'])} {f['held_out_accuracy']:.3f}"
    )
    rows.append(
      (
        "zero-shot FSDD digits (real speech)",
        f"{f['accuracy']:.3f}  (chance {f['chance']:.3f}, {f['utterances']} clips{held})",
      )
    )
    if "ctc" in f:
      # Beside the accuracy: whether an unseen voice is misheard, or heard and misplaced.
      rates = {s: g["error_rate"] for s, g in f["ctc"]["per_group"].items()}
      parts = [f"{s} {rates[s]:.3f}" for s in f["held_out_speakers"] if s in rates]
      seen = [r for s, r in rates.items() if s not in f["held_out_speakers"]]
      if seen:
        parts.append(f"trained voices {min(seen):.3f}-{max(seen):.3f}")
      rows.append(("FSDD digits, CTC character error rate", "; ".join(parts)))
  real = results.get("real_speech")
  if real:
    a = real["all"]
    cer = f"; CTC error rate {a['ctc']['error_rate']:.3f}" if "ctc" in a else ""
    rows.append(
      (
        "real speech, unseen speakers: speech->text R@1 / R@10, text->speech R@1",
        f"{' / '.join(_real_recalls(a))}  ({a['clips']} clips, {a['sentences']} sentences, "
        f"{a['speakers']} speakers{cer})",
      )
    )
  for section, reason in results.get("skipped", {}).items():
    rows.append((f"{section} skipped", reason))
  for task in HEADLINE_PROBES:
    p = results.get("probing", {}).get(task)
    if p:
      rows.append(
        (
          f"probe {task}: speech / text / text->speech",
          f"{p['speech']:.3f} / {p['text']:.3f} / {p['text_to_speech_transfer']:.3f}"
          f"  (chance {p['chance']:.3f})",
        )
      )
  return rows


def headline(results: dict) -> str:
  """Markdown table of the headline figures (what `make demo` prints last)."""
  lines = [f"| {results['split']} split, {results['utterances']} utterances | |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in _rows(results)]
  return "\n".join(lines)


def check_name(name: str) -> str:
  """A report name is a plain file stem: it names NAME.json, NAME.md and NAME_*.png in the run."""
  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name.endswith((".json", ".md")):
    raise ValueError(
      f"report name {name!r}: use letters, digits, '_', '.' or '-', without an extension "
      "(e.g. fsdd_other)"
    )
  return name


def _fsdd_tables(fsdd: dict) -> list[str]:
  """Per-speaker accuracy (and CTC error rate); with a CTC head, what each word is heard as."""
  ctc = fsdd.get("ctc")
  lines = ["## Zero-shot FSDD digits per speaker\n"]
  if ctc:
    lines.append(
      f"CTC: greedy transcripts of the multitask head ({ctc['targets']}) against the digit word.\n"
    )
    lines += [
      "| speaker | accuracy | clips | CTC error rate | transcribed exactly |",
      "|---|---|---|---|---|",
    ]
  else:
    lines += ["| speaker | accuracy | clips |", "|---|---|---|"]
  for speaker, g in fsdd["per_group"].items():
    tag = " (held out)" if speaker in fsdd["held_out_speakers"] else ""
    row = f"| {speaker}{tag} | {g['accuracy']:.3f} | {g['utterances']} |"
    if ctc:
      c = ctc["per_group"][speaker]
      row += f" {c['error_rate']:.3f} | {c['exact']:.3f} |"
    lines.append(row)
  lines.append("")
  if ctc:
    speakers = list(ctc["most_common"])
    words = sorted({w for heard in ctc["most_common"].values() for w in heard})
    lines.append("## What the CTC head hears (most common transcripts, with counts)\n")
    lines.append("| said | " + " | ".join(speakers) + " |")
    lines.append("|---" * (len(speakers) + 1) + "|")
    for w in words:
      cells = [
        ", ".join(f"{t or '(nothing)'} ({n})" for t, n in ctc["most_common"][s].get(w, []))
        for s in speakers
      ]
      lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines.append("")
  return lines


def _real_recalls(group: dict) -> tuple[str, str, str]:
  """Speech->text R@1 and R@10, text->speech R@1 of a real-speech group ("-": one sentence)."""
  r = group["retrieval"]
  if r is None:
    return ("-", "-", "-")
  s2t, t2s = r["speech_to_text"], r["text_to_speech"]
  return tuple(f"{x:.3f}" for x in (s2t["recall_at_1"], s2t["recall_at_10"], t2s["recall_at_1"]))


def _real_speech_table(real: dict) -> list[str]:
  """One row per domain (and all together): clips, sentences, speakers, recalls, CTC."""
  ctc = "ctc" in real["all"]
  lines = [
    "## Real speech, unseen speakers\n",
    f"Split `{real['split']}`: speakers held out of training (`data.real_held_out`). Speech->text "
    "ranks each clip's transcript among the group's distinct sentences, text->speech each "
    "sentence's clips among the group's clips.\n",
  ]
  if real["seen_in_training"]:
    lines.append(f"**Not unseen**: the train split holds {', '.join(real['seen_in_training'])}.\n")
  header = "| domain | clips | sentences | speakers | speech->text R@1 / R@10 | text->speech R@1 |"
  lines += [header + (" CTC error rate |" if ctc else ""), "|---" * (6 + ctc) + "|"]
  for name, g in [*real["domains"].items(), ("all", real["all"])]:
    s2t_1, s2t_10, t2s_1 = _real_recalls(g)
    row = (
      f"| {name} | {g['clips']} | {g['sentences']} | {g['speakers']} | {s2t_1} / {s2t_10} | "
      f"{t2s_1} |"
    )
    lines.append(row + (f" {g['ctc']['error_rate']:.3f} |" if ctc else ""))
  lines.append("")
  return lines


def _markdown(workdir: str, results: dict, name: str) -> str:
  title = "" if name == DEFAULT_NAME else f" ({name})"
  parts = [
    f"# stalign report{title}: {fs.abspath(workdir)}\n",
    f"Checkpoint step {results.get('step')}. Schema: docs/report_schema.md.\n",
    headline(results) + "\n",
  ]
  probing = results.get("probing")
  if probing:
    parts.append("## Linear probes (test accuracy)\n")
    parts.append("| task | classes | chance | speech | text | text->speech | speech->text |")
    parts.append("|---|---|---|---|---|---|---|")
    for task, p in sorted(probing.items()):
      parts.append(
        f"| {task} | {p['classes']} | {p['chance']:.3f} | {p['speech']:.3f} | {p['text']:.3f}"
        f" | {p['text_to_speech_transfer']:.3f} | {p['speech_to_text_transfer']:.3f} |"
      )
    parts.append("")
  fsdd = results.get("zero_shot", {}).get("fsdd")
  if fsdd:
    parts += _fsdd_tables(fsdd)
  real = results.get("real_speech")
  if real:
    parts += _real_speech_table(real)
  for name, path in results.get("figures", {}).items():
    parts.append(f"## {name.replace('_', ' ')}\n\n![{name}]({path})\n")
  return "\n".join(parts)


def _axes(size: tuple[float, float]):
  fig = Figure(figsize=size)
  return fig, fig.subplots()


def similarity_figure(emb) -> Figure:
  """Cosine of the first utterances (rows) vs their transcripts (columns); pairs on the diagonal."""
  n = min(SIMILARITY_SAMPLE, len(emb.speech))
  sim = unit(emb.speech[:n]) @ unit(emb.paired_text[:n]).T
  fig, ax = _axes((6, 5))
  im = ax.imshow(sim, cmap="viridis")
  fig.colorbar(im, ax=ax, label="cosine")
  ax.set(
    xlabel="transcript (teacher)",
    ylabel="utterance (student)",
    title=f"speech x text cosine, first {n} utterances",
  )
  fig.tight_layout()
  return fig


def pca_2d(x: np.ndarray) -> np.ndarray:
  """Projection onto the two leading principal components."""
  centred = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T


def pca_figure(emb) -> Figure:
  """Both modalities in one PCA map (fit on both): the modality gap and the pairing, at a glance."""
  speech, text = unit(emb.speech), unit(emb.paired_text)
  xy = pca_2d(np.concatenate([speech, text]))
  s, t = xy[: len(speech)], xy[len(speech) :]
  fig, ax = _axes((6, 5))
  for i in range(min(50, len(s))):
    ax.plot([s[i, 0], t[i, 0]], [s[i, 1], t[i, 1]], color="0.8", lw=0.5, zorder=0)
  ax.scatter(s[:, 0], s[:, 1], s=6, label="speech (student)")
  ax.scatter(t[:, 0], t[:, 1], s=6, label="text (teacher)")
  ax.set(xlabel="PC 1", ylabel="PC 2", title="PCA of unit embeddings (grey: 50 pairs)")
  ax.legend()
  fig.tight_layout()
  return fig


def probes_figure(probing: dict) -> Figure:
  tasks = sorted(probing)
  kinds = ("speech", "text", "text_to_speech_transfer", "speech_to_text_transfer")
  x = np.arange(len(tasks))
  width = 0.8 / len(kinds)
  fig, ax = _axes((max(6, 0.7 * len(tasks)), 4))
  for i, kind in enumerate(kinds):
    ax.bar(x + i * width, [probing[t][kind] for t in tasks], width, label=kind.replace("_", " "))
  ax.scatter(
    x + 0.4 - width / 2,
    [probing[t]["chance"] for t in tasks],
    marker="_",
    s=200,
    color="k",
    label="chance (majority)",
    zorder=3,
  )
  ax.set_xticks(x + 0.4 - width / 2, tasks, rotation=45, ha="right")
  ax.set(ylabel="test accuracy", ylim=(0, 1), title="linear probes")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def probe_layers_figure(probing: dict) -> Figure:
  fig, ax = _axes((6, 4))
  for task in sorted(probing):
    acc = probing[task]["layers"]
    ax.plot(range(len(acc)), acc, marker="o", label=task)
  depth = len(next(iter(probing.values()))["layers"])
  ax.set_xticks(range(depth), ["frontend"] + [f"block {i}" for i in range(1, depth)])
  ax.set(ylabel="test accuracy", ylim=(0, 1), title="probes on mean-pooled student layers")
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  return fig


def write_figures(workdir: str, results: dict, emb, name: str = DEFAULT_NAME) -> dict[str, str]:
  """Saves the plots in `workdir`, prefixed `NAME_` for a named report; returns {figure: file}."""
  prefix = "" if name == DEFAULT_NAME else f"{name}_"

  def save(fig: Figure, file: str) -> str:
    with fs.atomic_write(os.path.join(workdir, prefix + file), "wb") as f:
      fig.savefig(f, format="png", dpi=100)
    return prefix + file

  figures = {
    "similarity_matrix": save(similarity_figure(emb), "similarity.png"),
    "pca": save(pca_figure(emb), "pca.png"),
  }
  probing = results.get("probing")
  if probing:
    figures["probes"] = save(probes_figure(probing), "probes.png")
    if all("layers" in p for p in probing.values()):
      figures["probe_layers"] = save(probe_layers_figure(probing), "probe_layers.png")
  return figures


def write(workdir: str, results: dict, emb=None, name: str = DEFAULT_NAME) -> None:
  """Writes NAME.json and NAME.md (and, given the split's `Embeddings`, the figures)."""
  check_name(name)
  results["schema_version"] = SCHEMA_VERSION
  if emb is not None:
    results["figures"] = write_figures(workdir, results, emb, name)
  with fs.atomic_write(os.path.join(workdir, f"{name}.json")) as f:
    json.dump(results, f, indent=2, sort_keys=True)
  with fs.atomic_write(os.path.join(workdir, f"{name}.md")) as f:
    f.write(_markdown(workdir, results, name))
