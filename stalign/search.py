r"""Finds what is nearest in meaning to a query: texts for a recording, recordings for typed text.

  python -m stalign.search --workdir=runs/demo --query=question.wav --texts=sentences.txt
  python -m stalign.embed --workdir=runs/demo --modality=text --input=sentences.txt \
      --output=index.parquet                      # once
  python -m stalign.search --workdir=runs/demo --query=question.wav --index=index.parquet
  python -m stalign.embed --workdir=runs/demo --input=clips/ --output=speech.parquet
  python -m stalign.search --workdir=runs/demo --text="turn on the fan" --index=speech.parquet

The query is a recording (`--query`, embedded by the student) or typed text
(`--text`, embedded by the teacher). The candidates are a text file (`--texts`,
every line embedded by the teacher on each call) or an index written once by
`stalign.embed` (`--index`: texts or recordings; or vectors of a
sentence-transformers model, `--space=teacher`), of which only the query is
embedded, in the index's space (the one recorded in it, else `--space`). The
`--top_k` candidates of highest cosine are printed best first with their score:
a text by its words, a recording by its path. Only the answer lines are
printed; `--verbosity=0` shows the INFO log. The model, the query, the texts
and the index may be local or `gs://` URLs (`stalign.fs`).
"""

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class Candidates:
  """What a query is compared with: a label per candidate, in the space of their vectors.

  `vectors` is None for texts the model embeds on each call (`--texts`).
  """

  source: str  # The flag that named them, for messages: "--index=speech.parquet".
  labels: list[str]
  space: str
  vectors: np.ndarray | None = None


def check_flags(query: str | None, text: str | None, texts: str | None, index: str | None) -> None:
  """The flags name one query and one set of candidates that go together."""
  if bool(query) == bool(text):
    given = f"--query={query} and --text={text!r} both given" if query else "no query given"
    raise app.UsageError(
      f"{given}: search with one of --query (an audio file) or --text (words to find recordings of)"
    )
  if bool(texts) == bool(index):
    given = f"--texts={texts} and --index={index} both given" if texts else "no candidates given"
    raise app.UsageError(
      f"{given}: give one of --texts (a text file, one candidate per line) or --index "
      "(embeddings written by `python -m stalign.embed`)"
    )
  if text and texts:
    raise app.UsageError(
      f"--text={text!r} finds recordings, and --texts={texts} holds sentences: give --index with "
      "embeddings of your recordings (`python -m stalign.embed --input=CLIPS "
      "--output=speech.parquet`)"
    )
  if query and not fs.isfile(query):
    raise FileNotFoundError(f"--query={query} is not a file: give an audio file to search with")


def read_texts(path: str, space: str | None) -> Candidates:
  """The sentences of a UTF-8 text file, one per line (blank lines are none)."""
  if not fs.isfile(path):
    raise FileNotFoundError(f"--texts={path} is not a file: give a text file, one sentence a line")
  try:
    content = fs.read_bytes(path).decode("utf-8-sig")  # -sig: a byte-order mark is no text.
  except UnicodeDecodeError as e:
    raise app.UsageError(
      f"--texts={path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
      "save it as UTF-8"
    ) from e
  texts = [line.strip() for line in content.splitlines() if line.strip()]
  if not texts:
    raise app.UsageError(f"--texts={path} has no sentences: write one candidate per line")
  return Candidates(f"--texts={path}", texts, space or "shared")


def _label(row: dict, modality: str | None) -> str:
  """A recording by its path (its transcript, if any, is not what was found), a text by itself."""
  keys = ("path", "id", "text") if modality == "speech" else ("text", "path", "id")
  return next(str(row[k]) for k in keys if row.get(k) is not None)


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


def read_index(path: str, space: str | None) -> Candidates:
  """The rows of an embeddings file (`stalign.embed.read_embeddings`) as candidates."""
  vectors, rows, info = embed.read_embeddings(path)
  if not len(vectors):
    raise app.UsageError(
      f"--index={path} holds no embeddings: write one from your inputs with "
      "`python -m stalign.embed --input=... --output=...`"
    )
  labels = [_label(r, info.get("modality")) for r in rows]
  return Candidates(f"--index={path}", labels, _index_space(info, space, path), vectors)


def search(
  model: api.Model,
  candidates: Candidates,
  query: str | None = None,
  text: str | None = None,
  k: int = 5,
) -> list[tuple[float, str]]:
  """[(cosine, label)] of the `k` candidates nearest to a recording `query` or a `text`."""
  vectors, dim = candidates.vectors, model.target_mean.shape[-1]
  if vectors is None:
    vectors = model.encode_text(candidates.labels, candidates.space, show_progress_bar=False)
  elif vectors.shape[1] != dim:
    raise app.UsageError(
      f"{candidates.source} holds {vectors.shape[1]}-d vectors and this model embeds {dim}-d "
      "ones: write the index with this model (`python -m stalign.embed --workdir=...`)"
    )
  if query is not None:
    q = model.encode_speech(query, space=candidates.space, show_progress_bar=False)
  else:
    q = model.encode_text(text, candidates.space, show_progress_bar=False)
  return [(score, candidates.labels[row]) for score, row in top_k(q, vectors, k)]


def main(argv):
  cli.check_no_arguments(argv)
  f = flags.FLAGS
  check_flags(f.query, f.text, f.texts, f.index)
  candidates = read_texts(f.texts, f.space) if f.texts else read_index(f.index, f.space)
  model = api.load(f.workdir, step=f.step)
  for score, label in search(model, candidates, f.query, f.text, f.top_k):
    print(f"{score:+.3f}  {label}")


if __name__ == "__main__":
  flags.DEFINE_string(
    "workdir", None, "Trained run directory (or RUN/checkpoints/STEP), or an export folder."
  )
  flags.DEFINE_string("query", None, "Audio file to search with (any sample rate and length).")
  flags.DEFINE_string("text", None, "Words to search recordings with (an --index of speech).")
  flags.DEFINE_string("texts", None, "Text file (UTF-8), one candidate sentence per line.")
  flags.DEFINE_string(
    "index", None, ".parquet or .npy written by `stalign.embed` (or holding an embedding column)."
  )
  flags.DEFINE_enum(
    "space",
    None,
    list(api.SPACES),
    "Space to compare in; default: the index's own, or shared for --texts.",
  )
  flags.DEFINE_integer("top_k", 5, "How many results to print.", lower_bound=1)
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
