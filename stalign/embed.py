r"""Embeds a folder of audio files or a JSONL manifest with a trained run, into a file.

  python -m stalign.embed --workdir=runs/demo --input=clips/ --output=clips.parquet
  python -m stalign.embed --workdir=runs/demo --input=test.jsonl --output=test.npy

`.parquet` holds one row per embedded file (path, id, text when the manifest
has it, embedding). `.npy` holds the [N, D] matrix, with a JSON index beside
it (`test.npy` -> `test.json`) giving each row's path/id/text. Files that
cannot be used (corrupt, silent, too long) are skipped and listed with the
reason in the index (parquet: `<output>.skipped.json`), so one bad clip never
loses a whole batch job. Embeddings live in the run's joint space: compare
them with `stalign.load(RUN).embed_text(...)` by cosine.
"""

import glob
import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from stalign import api
from stalign import cli
from stalign.data import audio
from stalign.data import sources

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def list_inputs(path: str) -> list[dict]:
  """[{id, audio_filepath[, text]}] from a manifest (.jsonl/.json) or the audio under a folder."""
  if os.path.isdir(path):
    files = sorted(
      f
      for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
      if f.lower().endswith(AUDIO_EXTENSIONS)
    )
    return [{"id": os.path.relpath(f, path), "audio_filepath": f} for f in files]
  if os.path.exists(path):
    return list(sources.read_manifest(path))
  raise FileNotFoundError(f"--input={path}: neither a folder of audio files nor a JSONL manifest")


def embed_inputs(model: api.Model, items: list[dict]) -> tuple[np.ndarray, list[dict], list[dict]]:
  """(embeddings [N, D], rows describing them, skipped items with the reason)."""
  feats, rows, skipped = [], [], []
  for item in items:
    try:
      feats.append(model.features(model.load_waveform(item["audio_filepath"])))
    except audio.AudioError as e:
      logging.warning("skipping %s", e)
      skipped.append({"path": item["audio_filepath"], "reason": str(e)})
      continue
    rows.append(
      {
        "path": item["audio_filepath"],
        "id": item["id"],
        **({"text": item["text"]} if "text" in item else {}),
      }
    )
  if not feats:
    raise ValueError(f"no usable audio among {len(items)} inputs (skipped: {skipped[:3]})")
  return model.embed_features(feats)[0], rows, skipped


def write(output: str, embeddings: np.ndarray, rows: list[dict], skipped: list[dict]) -> list[str]:
  """Writes parquet or npy + JSON index by `output`'s extension; returns the files written."""
  base, ext = os.path.splitext(output)
  if ext == ".parquet":
    try:
      import pyarrow as pa  # pylint: disable=g-import-not-at-top
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise SystemExit(
        f"--output={output} needs pyarrow (pip install pyarrow), or write .npy"
      ) from e
    columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    columns["embedding"] = list(embeddings.astype(np.float32))
    pq.write_table(pa.table(columns), output)
    written = [output]
    if skipped:
      with open(output + ".skipped.json", "w") as f:
        json.dump(skipped, f, indent=2)
      written.append(output + ".skipped.json")
    return written
  if ext != ".npy":
    raise SystemExit(f"--output={output}: use a .npy or .parquet file name")
  np.save(output, embeddings.astype(np.float32))
  with open(base + ".json", "w") as f:
    json.dump({"rows": rows, "skipped": skipped, "dim": int(embeddings.shape[1])}, f, indent=2)
  return [output, base + ".json"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  model = api.load(f.workdir, step=f.step)
  embeddings, rows, skipped = embed_inputs(model, list_inputs(f.input))
  for path in write(f.output, embeddings, rows, skipped):
    print(path)
  print(f"{len(rows)} embedded ({embeddings.shape[1]}-d), {len(skipped)} skipped")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Trained run directory (or RUN/checkpoints/STEP).")
  flags.DEFINE_string(
    "input",
    None,
    "Folder of audio files (searched recursively) or a JSONL manifest "
    "with audio_filepath (and optionally id, text) per line.",
  )
  flags.DEFINE_string(
    "output", None, "out.parquet (one row per file) or out.npy (+ out.json index)."
  )
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.mark_flags_as_required(["workdir", "input", "output"])
  cli.run(main)
