"""The shared and the teacher space side by side, on the demo run (`STALIGN_RUN`, runs/demo).

  spoken_digits  the spoken-query-against-a-sentence-transformers-index case in
                 miniature: every FSDD recording of `SPEAKER` (a voice the demo
                 never trained on) searched against the ten words "zero" ...
                 "nine"; in the teacher space the words are what
                 sentence-transformers' `encode` gives. Bare words, no templates.
  test_split     speech->text R@1 over the run's test split, and the mean cosine
                 of each utterance's teacher-space vector (and of the student's
                 output taken as is) to its transcript's own teacher vector.

Nothing is tuned on these figures.

  .venv/bin/python -m bench.run spaces
"""

import glob
import os
import re
from typing import Any

import numpy as np

import stalign
from stalign import data
from stalign import evaluate
from stalign.data import sources
from stalign.utils import unit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDD_DIR = os.path.join(REPO, data.real_data_dir("fsdd"))
SPEAKER = "nicolas"  # Never trained on by the demo (data.fsdd_speakers.train).


def _spoken_digits(model) -> dict[str, Any]:
  files = sorted(glob.glob(os.path.join(FSDD_DIR, "recordings", f"*_{SPEAKER}_*.wav")))
  digits = np.array([int(re.match(r"(\d)_", os.path.basename(f)).group(1)) for f in files])
  out = {"speaker": SPEAKER, "clips": len(files), "chance": 1 / len(sources.DIGIT_WORDS)}
  for space in ("teacher", "shared"):
    words = model.encode_text(list(sources.DIGIT_WORDS), space=space)
    predicted = np.argmax(model.encode_speech(files, space=space) @ unit(words).T, axis=1)
    out[f"top1_{space}"] = float(np.mean(predicted == digits))
  return out


def _test_split(model) -> dict[str, Any]:
  emb = evaluate.embed_split(model, model.config.eval.split)
  teacher, speech = unit(emb.raw_text), model.to_teacher_space(emb.speech)

  def recall_at_1(queries, gallery):
    return float(np.mean(np.argmax(unit(queries) @ unit(gallery).T, 1) == emb.text_index))

  return {
    "utterances": len(emb.speech),
    "r_at_1_shared": recall_at_1(emb.speech, emb.text),
    "r_at_1_teacher": recall_at_1(speech, teacher),
    "cosine_to_own_teacher_vector": float(np.mean(np.sum(speech * teacher[emb.text_index], 1))),
    "same_for_student_output_as_is": float(
      np.mean(np.sum(unit(emb.speech) * teacher[emb.text_index], 1))
    ),
  }


def run() -> dict[str, Any]:
  workdir = os.environ.get("STALIGN_RUN", os.path.join(REPO, "runs", "demo"))
  if not os.path.exists(os.path.join(workdir, "config.json")):
    return {"skipped": f"no trained run in {workdir}; run `make demo` or set STALIGN_RUN"}
  model = stalign.load(workdir)
  out = {"run": workdir, "step": model.step, "spoken_digits": _spoken_digits(model)}
  if os.path.isdir(model.config.data_dir):  # An export's data folder may be gone.
    out["test_split"] = _test_split(model)
  return out
