"""The run report: `report.json` (stable schema, see README) and a short `report.md`."""
import json
import os


def _rows(results: dict) -> list[tuple[str, str]]:
  rows = []
  r = results.get("retrieval")
  if r:
    for direction in ("speech_to_text", "text_to_speech"):
      d = r[direction]
      rows.append((f"{direction.replace('_', ' ')} R@1 / R@5 / R@10",
                   f"{d['recall_at_1']:.3f} / {d['recall_at_5']:.3f} / {d['recall_at_10']:.3f}"
                   f"  (gallery {d['gallery']}, median rank {d['median_rank']:.0f})"))
    rows.append(("paired / unpaired cosine", f"{r['paired_cosine']:.3f} / {r['unpaired_cosine']:.3f}"))
    rows.append(("gallery difficulty (mean NN teacher cosine)", f"{r['gallery_difficulty']:.3f}"))
  return rows


def headline(results: dict) -> str:
  """Markdown table of the headline figures (what `make demo` prints last)."""
  lines = [f"| {results['split']} split, {results['utterances']} utterances | |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in _rows(results)]
  return "\n".join(lines)


def write(workdir: str, results: dict) -> None:
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(f"# stalign report: {os.path.abspath(workdir)}\n\n{headline(results)}\n")
