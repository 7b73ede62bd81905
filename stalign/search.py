r"""Finds the texts nearest in meaning to a spoken query, in a text file or a prebuilt index.

  python -m stalign.search --workdir=runs/demo --query=question.wav --texts=sentences.txt
  python -m stalign.embed --workdir=runs/demo --modality=text --input=sentences.txt \
      --output=index.parquet                      # once
  python -m stalign.search --workdir=runs/demo --query=question.wav --index=index.parquet

With `--texts`, every line is embedded by the teacher on each call; with
`--index`, the texts were embedded once by `stalign.embed` (or are vectors of
a sentence-transformers model, `--space=teacher`), and only the query is
embedded. The query is embedded by the student in the index's space (the one
recorded in it, else `--space`), and the `--top_k` rows of highest cosine are
printed best first with their score. Only the answer lines are printed;
`--verbosity=0` shows the INFO log. The model, the query, the texts and the
index may be local or `gs://` URLs (`stalign.fs`).
"""

from absl import app
from absl import flags
import numpy as np

from stalign import api
from stalign import cli
from stalign import embed
from stalign import fs
from stalign import utils

BLOCK = 65_536  # Index rows scored at a time: memory stays bounded for a memory-mapped index.


def top_k(query: np.ndarray, index: np.ndarray, k: int) -> list[tuple[float, int]]:
  """[(cosine, row)] of the `k` rows of `index` [N, D] nearest to `query` [D], best first."""
  q = utils.unit(np.asarray(query, np.float32))
  scores = np.concatenate(
    [
      utils.unit(np.asarray(index[i : i + BLOCK], np.float32)) @ q
      for i in range(0, len(index), BLOCK)
    ]
  )
  best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
  best = best[np.argsort(-scores[best], kind="stable")]
  return [(float(scores[i]), int(i)) for i in best]


def _label(row: dict) -> str:
  return next(str(row[k]) for k in ("text", "path", "id") if row.get(k) is not None)


def _read_texts(path: str) -> list[str]:
  if not fs.isfile(path):
    raise FileNotFoundError(f"--texts={path} is not a file")
  with fs.open(path) as fh:
    texts = [line.strip() for line in fh if line.strip()]
  if not texts:
    raise app.UsageError(f"--texts={path} has no sentences (one per line)")
  return texts


def _index_space(info: dict, flag: str | None, path: str) -> str:
  """The space the query must be embedded in to be compared with the index's vectors."""
  recorded = info.get("space")
  if recorded and flag and flag != recorded:
    raise app.UsageError(f"--index={path} holds {recorded}-space vectors, not --space={flag}")
  if not (recorded or flag):
    raise app.UsageError(
      f"--index={path} does not record its space (not written by stalign.embed): pass "
      "--space=teacher for sentence-transformers vectors of the teacher, else --space=shared"
    )
  return recorded or flag


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if bool(f.texts) == bool(f.index):
    raise app.UsageError("give one of --texts (a text file) or --index (from stalign.embed)")
  if not fs.isfile(f.query):
    raise FileNotFoundError(f"--query={f.query} is not a file")
  if f.texts:
    labels, space = _read_texts(f.texts), f.space or "shared"
  else:
    vectors, rows, info = embed.read_embeddings(f.index)
    labels, space = [_label(r) for r in rows], _index_space(info, f.space, f.index)
  model = api.load(f.workdir, step=f.step)
  if f.texts:
    vectors = model.embed_text(labels, space)
  elif vectors.shape[1] != model.target_mean.shape[-1]:
    raise app.UsageError(
      f"--index={f.index} holds {vectors.shape[1]}-d vectors; {f.workdir} embeds "
      f"{model.target_mean.shape[-1]}-d ones (embedded with another teacher?)"
    )
  query = model.embed_speech([f.query], space=space)[0]
  for score, row in top_k(query, vectors, f.top_k):
    print(f"{score:+.3f}  {labels[row]}")


if __name__ == "__main__":
  flags.DEFINE_string(
    "workdir", None, "Trained run directory (or RUN/checkpoints/STEP), or an export folder."
  )
  flags.DEFINE_string("query", None, "Audio file to search with (any sample rate and length).")
  flags.DEFINE_string("texts", None, "Text file, one candidate sentence per line.")
  flags.DEFINE_string(
    "index", None, ".parquet or .npy written by `stalign.embed` (or holding an embedding column)."
  )
  flags.DEFINE_enum(
    "space",
    None,
    list(api.SPACES),
    "Space to compare in; default: the index's own, or shared for --texts.",
  )
  flags.DEFINE_integer("top_k", 5, "How many results to print.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.mark_flags_as_required(["workdir", "query"])
  cli.run(main)
