r"""Finds the sentences nearest in meaning to a spoken query, with a trained run.

  python -m stalign.search --workdir=runs/demo --query=question.wav --texts=sentences.txt

The query is embedded by the student and every line of `--texts` by the
teacher, in the shared space; sentences are printed best first with their
cosine. The sentences need not occur in training: this is the retrieval the
report measures, on your own data. Only the answer lines are printed;
`--verbosity=0` shows the INFO log.
"""

import os

from absl import app
from absl import flags
import numpy as np

from stalign import api
from stalign import cli


def search(model: api.Model, query: str, texts: list[str], top_k: int) -> list[tuple[float, str]]:
  """[(cosine, sentence)] of the `top_k` sentences nearest to the audio file `query`, best first."""
  scores = api.cosine(model.embed_speech([query]), model.embed_text(texts))[0]
  best = np.argsort(-scores, kind="stable")[:top_k]
  return [(float(scores[i]), texts[i]) for i in best]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  for flag in ("query", "texts"):
    if not os.path.isfile(f[flag].value):
      raise FileNotFoundError(f"--{flag}={f[flag].value} is not a file")
  with open(f.texts) as fh:
    texts = [line.strip() for line in fh if line.strip()]
  if not texts:
    raise app.UsageError(f"--texts={f.texts} has no sentences (one per line)")
  model = api.load(f.workdir, step=f.step)
  for score, text in search(model, f.query, texts, f.top_k):
    print(f"{score:+.3f}  {text}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Trained run directory (or RUN/checkpoints/STEP).")
  flags.DEFINE_string("query", None, "Audio file to search with (any sample rate; resampled).")
  flags.DEFINE_string("texts", None, "Text file, one candidate sentence per line.")
  flags.DEFINE_integer("top_k", 5, "How many sentences to print.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.mark_flags_as_required(["workdir", "query", "texts"])
  cli.run(main)
