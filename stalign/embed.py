r"""Embeds audio files or texts with a trained run or an export, into one file, resumably.

  python -m stalign.embed --workdir=runs/demo --input=clips/ --output=clips.parquet
  python -m stalign.embed --workdir=runs/demo --input=test.jsonl --output=test.npy
  python -m stalign.embed --workdir=EXPORT --modality=text --space=teacher \
      --input=sentences.txt --output=index.parquet

Inputs (`--modality`): speech is a folder of audio files (searched
recursively) or a JSONL manifest (`audio_filepath`, optionally `id`, `text`);
text is a text file (one text per line; blank lines are not inputs) or a
JSONL file (`text`, optionally `id`). Audio of any length is embedded (long
files in overlapping windows, `stalign.api`).

Outputs: `.parquet` holds one row per embedded input (id, path and/or text,
embedding) and records modality, space and model in its schema metadata;
`.npy` holds the [N, D] matrix, with a JSON index beside it (`test.npy` ->
`test.json`) giving each row's id/path/text and the same record. Inputs that
cannot be used (corrupt, silent, a manifest line without its field) are
skipped and listed with the reason (parquet: `<output>.skipped.json`; npy: in
the index), so one bad input never loses a whole batch job.

At scale: inputs are embedded in chunks of `--chunk_size`, each saved
atomically under `<output>.parts/` as it finishes, so a killed run started
again with the same flags continues after its last finished chunk and every
input is embedded and written exactly once. The output is then assembled
from the chunks, one at a time (never all embeddings in memory), and the
chunks are removed. Every batch is split over this process's devices. A
progress bar shows on a terminal.

Speech and text embedded in the same `--space` compare by cosine: `shared`
(default) for stalign's own comparisons, `teacher` for vectors comparable with
a sentence-transformers index of the teacher (`stalign.search --index`).

The model, the inputs (a folder, a manifest and the audio it names, a text
file) and the output may be local or `gs://` URLs (`stalign.fs`); for a URL
output the finished chunks are kept beside it in the bucket, so a run on a
preempted VM continues too.
"""

from collections.abc import Iterator
import hashlib
import io
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from stalign import api
from stalign import chunks
from stalign import cli
from stalign import fs
from stalign.data import audio

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MODALITIES = ("speech", "text")
META_KEY = b"stalign"  # Parquet schema metadata: modality, space, dim, model, step.


def _read_jsonl(path: str, field: str) -> tuple[list[tuple[int, dict]], list[dict]]:
  """([(line number, row)], skipped): rows lacking `field` or not JSON are skipped with a reason."""
  rows, skipped = [], []
  with fs.open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
          raise ValueError(f"no string {field!r} field")
      except ValueError as e:
        skipped.append(
          {"id": f"{os.path.basename(path)}:{line_no}", "reason": f"{path}:{line_no}: {e}"}
        )
        continue
      rows.append((line_no, row))
  return rows, skipped


def list_inputs(path: str, modality: str) -> tuple[list[dict], list[dict]]:
  """(inputs in a fixed order, inputs skipped while listing) of a folder, manifest or text file.

  Speech inputs are `{id, path[, text]}`, text inputs `{id, text}`. In a
  folder, hidden files and folders (`._x.wav` copies of macOS) are not inputs.
  """
  name = os.path.basename(path)
  if modality == "speech" and fs.isdir(path):
    ids = [os.path.relpath(f, path) for f in fs.walk_files(path)]
    ids = [
      i
      for i in ids
      if i.lower().endswith(AUDIO_EXTENSIONS) and not any(p.startswith(".") for p in i.split("/"))
    ]
    return [{"id": i, "path": os.path.join(path, i)} for i in ids], []
  if not fs.isfile(path):
    what = "a folder of audio files or a JSONL manifest" if modality == "speech" else "a text file"
    raise FileNotFoundError(f"--input={path}: not {what}")
  if modality == "text" and not path.endswith((".jsonl", ".json")):
    with fs.open(path) as f:
      return [
        {"id": f"{name}:{i}", "text": t.rstrip("\r\n")} for i, t in enumerate(f, 1) if t.strip()
      ], []
  field = "audio_filepath" if modality == "speech" else "text"
  rows, skipped = _read_jsonl(path, field)
  base = os.path.dirname(fs.abspath(path))
  items = []
  for line_no, row in rows:
    item = {"id": str(row.get("id", f"{name}:{line_no}"))}
    if modality == "speech":
      item["path"] = os.path.join(base, row["audio_filepath"])
    if isinstance(row.get("text"), str):
      item["text"] = row["text"]
    items.append(item)
  return items, skipped


def embed_chunk(
  model: api.Model, modality: str, space: str, items: list[dict]
) -> tuple[np.ndarray, list[dict], list[dict]]:
  """(embeddings [n, D], the n inputs they belong to, skipped inputs with the reason)."""
  if modality == "text":
    texts = [it["text"] for it in items]
    return model.encode_text(texts, space, show_progress_bar=False), items, []
  windows, rows, skipped = [], [], []
  for item in items:
    try:
      windows.append(model.windows(model.load_waveform(item["path"])))
    except audio.AudioError as e:
      logging.warning("skipping %s", e)
      skipped.append({"id": item["id"], "path": item["path"], "reason": str(e)})
      continue
    rows.append(item)
  if not windows:
    return np.zeros((0, model.target_mean.shape[-1]), np.float32), rows, skipped
  return model.embed_windows(windows, space), rows, skipped


def _fingerprint(settings: dict, items: list[dict]) -> str:
  """What a chunk's content depends on: a rerun may only continue chunks with the same one."""
  return hashlib.sha256(json.dumps([settings, items], sort_keys=True).encode()).hexdigest()


def embed_to_parts(
  model: api.Model,
  items: list[dict],
  parts: str,
  settings: dict,
  chunk_size: int,
) -> chunks.Cache:
  """Embeds each chunk of `items` not yet saved in `parts`; returns the saved chunks.

  A chunk holds its `embeddings` and, as JSON in `meta`, the inputs they
  belong to and those it skipped. `parts/state.json` records what the run
  embeds, so a rerun with other inputs or flags is refused rather than mixed in.
  """
  fs.makedirs(parts)
  state_path = os.path.join(parts, "state.json")
  fingerprint = _fingerprint({**settings, "chunk_size": chunk_size}, items)
  if fs.exists(state_path):
    if json.loads(fs.read_text(state_path))["fingerprint"] != fingerprint:
      raise FileExistsError(
        f"{parts} holds an unfinished run with other inputs or flags; delete it to start over, "
        "or rerun with the flags it was started with"
      )
  else:
    with fs.atomic_write(state_path) as f:
      json.dump({"fingerprint": fingerprint, "settings": settings}, f)

  def compute(chunk: list[dict]) -> dict[str, np.ndarray]:
    emb, rows, skipped = embed_chunk(model, settings["modality"], settings["space"], chunk)
    meta = json.dumps({"rows": rows, "skipped": skipped})
    return {"embeddings": emb.astype(np.float32), "meta": np.array(meta)}

  cache = chunks.Cache(parts, items, chunk_size)
  unit = "clip" if settings["modality"] == "speech" else "text"
  cache.fill(compute, desc="embed", unit=unit)
  return cache


def _chunk_meta(cache: chunks.Cache) -> tuple[list[dict], list[dict]]:
  """(rows, skipped) of the saved chunks, in input order, reading one chunk at a time."""
  rows, skipped = [], []
  for i in range(len(cache)):
    meta = json.loads(str(cache.read(i)["meta"]))
    rows += meta["rows"]
    skipped += meta["skipped"]
  return rows, skipped


def _chunk_embeddings(cache: chunks.Cache) -> Iterator[np.ndarray]:
  """Each saved chunk's embeddings in input order, one chunk in memory at a time."""
  for i in range(len(cache)):
    yield cache.read(i)["embeddings"]


def _columns(modality: str) -> tuple[str, ...]:
  return ("id", "path", "text") if modality == "speech" else ("id", "text")


def assemble(
  cache: chunks.Cache, output: str, info: dict, skipped: list[dict]
) -> tuple[list[str], int, int]:
  """Writes `output` (.parquet, or .npy + .json index) from the saved chunks, streaming them.

  `skipped` (inputs skipped before embedding) is listed with those the chunks skipped.

  Returns:
    (the files written, rows embedded, inputs skipped).
  """
  base, ext = os.path.splitext(output)
  rows, chunk_skipped = _chunk_meta(cache)
  skipped = skipped + chunk_skipped
  start = 0
  if ext == ".parquet":
    pa, pq = _pyarrow(output)
    dim, columns = info["dim"], _columns(info["modality"])
    schema = pa.schema(
      [(c, pa.string()) for c in columns] + [("embedding", pa.list_(pa.float32(), dim))],
      metadata={META_KEY: json.dumps(info)},
    )
    with fs.staged(output) as local, pq.ParquetWriter(local, schema) as writer:
      for emb in _chunk_embeddings(cache):
        part = rows[start : start + len(emb)]
        table = {c: [r.get(c) for r in part] for c in columns}
        table["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
        writer.write_table(pa.table(table, schema=schema))
        start += len(emb)
    with fs.atomic_write(output + ".skipped.json") as f:
      json.dump(skipped, f, indent=2)
    return [output, output + ".skipped.json"], len(rows), len(skipped)
  with fs.staged(output) as local:
    matrix = np.lib.format.open_memmap(
      local, mode="w+", dtype=np.float32, shape=(len(rows), info["dim"])
    )
    for emb in _chunk_embeddings(cache):
      matrix[start : start + len(emb)] = emb
      start += len(emb)
    matrix.flush()
    del matrix  # Closes the memory map before the rename or upload.
  with fs.atomic_write(base + ".json") as f:
    json.dump({**info, "rows": rows, "skipped": skipped}, f, indent=2)
  return [output, base + ".json"], len(rows), len(skipped)


def _pyarrow(output: str):
  try:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f"{output} needs pyarrow (pip install pyarrow), or use .npy") from e
  return pa, pq


def read_embeddings(path: str) -> tuple[np.ndarray, list[dict], dict]:
  """(embeddings [N, D], a dict per row, what was recorded: modality, space, ...) of a file.

  Reads what `assemble` writes, and also a parquet file with an `embedding`
  column written by other code (e.g. sentence-transformers vectors), or a bare
  .npy matrix; those record nothing, so their space must be given. A local
  .npy is memory-mapped; one at a URL is read whole.
  """
  if not fs.isfile(path):
    raise FileNotFoundError(f"{path} is not a file; write one with `python -m stalign.embed`")
  base, ext = os.path.splitext(path)
  if ext == ".parquet":
    _, pq = _pyarrow(path)
    with fs.open(path, "rb") as f:
      table = pq.read_table(f)
    if "embedding" not in table.column_names:
      raise app.UsageError(f"{path} has no 'embedding' column (columns {table.column_names})")
    column = table.column("embedding").combine_chunks()
    flat = column.flatten().to_numpy().astype(np.float32)
    if len(column) and flat.size % len(column):
      raise app.UsageError(f"{path}: rows of its 'embedding' column differ in length")
    info = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return flat.reshape(len(column), -1), table.drop(["embedding"]).to_pylist(), info
  if ext != ".npy":
    raise app.UsageError(f"{path}: an index is a .parquet or .npy file")
  if fs.is_remote(path):
    matrix = np.load(io.BytesIO(fs.read_bytes(path)))
  else:
    matrix = np.load(path, mmap_mode="r")
  if not fs.exists(base + ".json"):
    return matrix, [{"id": str(i)} for i in range(len(matrix))], {}
  index = json.loads(fs.read_text(base + ".json"))
  return matrix, index.pop("rows"), index


def run(
  model: api.Model,
  model_path: str,
  input_path: str,
  output: str,
  modality: str = "speech",
  space: str = "shared",
  chunk_size: int = 1024,
) -> tuple[list[str], int, int]:
  """Embeds `input_path` into `output`, continuing an interrupted run: `assemble`'s result."""
  if os.path.splitext(output)[1] not in (".parquet", ".npy"):
    raise app.UsageError(f"--output={output}: use a .npy or .parquet file name")
  items, listing_skipped = list_inputs(input_path, modality)
  for s in listing_skipped:
    logging.warning("skipping %s", s["reason"])
  logging.info(
    "%d %s inputs; batches split over %d local devices",
    len(items),
    modality,
    jax.local_device_count(),
  )
  info = {
    "modality": modality,
    "space": api.check_space(space),
    "dim": int(model.target_mean.shape[-1]),
    "model": fs.abspath(model_path),
    "step": model.step,
  }
  parts = output + ".parts"
  cache = embed_to_parts(model, items, parts, info, chunk_size)
  written = assemble(cache, output, info, listing_skipped)
  fs.rmtree(parts)
  return written


def main(argv):
  cli.check_no_arguments(argv)
  f = flags.FLAGS
  model = api.load(f.workdir, step=f.step)
  files, embedded, skipped = run(
    model, f.workdir, f.input, f.output, f.modality, f.space, f.chunk_size
  )
  for path in files:
    print(path)
  print(f"{embedded} embedded ({f.modality}, {f.space} space), {skipped} skipped")


if __name__ == "__main__":
  flags.DEFINE_string(
    "workdir", None, "Trained run directory (or RUN/checkpoints/STEP), or an export folder."
  )
  flags.DEFINE_enum("modality", "speech", list(MODALITIES), "What --input holds.")
  flags.DEFINE_string(
    "input",
    None,
    "speech: a folder of audio files (searched recursively) or a JSONL manifest with "
    "audio_filepath (and optionally id, text) per line; text: a text file, one text per line, "
    "or a JSONL file with text (and optionally id) per line.",
  )
  flags.DEFINE_string(
    "output", None, "out.parquet (one row per input) or out.npy (+ out.json index)."
  )
  flags.DEFINE_enum(
    "space",
    "shared",
    list(api.SPACES),
    "shared: stalign's speech-text space; teacher: the teacher's own (sentence-transformers).",
  )
  flags.DEFINE_integer("chunk_size", 1024, "Inputs per saved chunk (the unit of resumption).")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.mark_flags_as_required(["workdir", "input", "output"])
  cli.run(main)
