"""Transcript normalisation and CTC targets.

The CTC head predicts characters; index 0 is the CTC blank so that
`optax.ctc_loss` and greedy decoding agree on it without extra arguments.
Transcripts are normalised the same way for CTC targets and for the teacher's
input statistics, so a user's "Turn ON the lights!" and the corpus's
"turn on the lights" meet in one place.
"""
import re
import unicodedata

import numpy as np

BLANK = 0
ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(ALPHABET) + 1  # + blank.
_CHAR_TO_ID = {ch: i + 1 for i, ch in enumerate(ALPHABET)}
_DROP = re.compile(r"[\.,;:!\?\"\(\)\[\]]")
_SPACES = re.compile(r"[\s\-_/]+")


class TranscriptError(ValueError):
  """A transcript that cannot become a CTC target (names the offending characters)."""


def normalize(text: str) -> str:
  """Lower-cases, strips accents and punctuation, collapses whitespace."""
  text = unicodedata.normalize("NFKD", text)
  text = "".join(ch for ch in text if not unicodedata.combining(ch))
  text = _DROP.sub("", text.lower())
  return _SPACES.sub(" ", text).strip()


def encode(text: str) -> np.ndarray:
  """Normalised transcript -> int32 CTC label ids (never containing BLANK)."""
  norm = normalize(text)
  unknown = sorted({ch for ch in norm if ch not in _CHAR_TO_ID})
  if unknown:
    raise TranscriptError(
        f"characters outside the CTC alphabet {unknown!r} in {text!r}; "
        "spell numbers and symbols out as words")
  if not norm:
    raise TranscriptError(f"transcript {text!r} is empty after normalisation")
  return np.array([_CHAR_TO_ID[ch] for ch in norm], np.int32)


def decode_greedy(ids: np.ndarray) -> str:
  """Best-path CTC decoding: merge repeats, then drop blanks."""
  out, prev = [], BLANK
  for i in np.asarray(ids).tolist():
    if i != prev and i != BLANK:
      out.append(ALPHABET[i - 1])
    prev = i
  return "".join(out)


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance; used for the character error rate."""
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]
