"""Transcript normalisation and CTC targets.

The CTC head predicts characters or, optionally, phonemes (`encode_targets`);
index 0 is the CTC blank so that `optax.ctc_loss` and greedy decoding agree on
it without extra arguments. Transcripts are normalised the same way for CTC
targets and for the teacher's input statistics, so a user's "Turn ON the
lights!" and the corpus's "turn on the lights" meet in one place.
"""

from collections.abc import Sequence
import re
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np

from stalign.data import espeak

BLANK = 0
ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(ALPHABET) + 1  # + blank.
_CHAR_TO_ID = {ch: i + 1 for i, ch in enumerate(ALPHABET)}

# Phoneme targets: the IPA phonemes espeak-ng's en-us voice produces, stress
# removed. Fixed here rather than collected from the data, so the CTC head has
# the same size and ids for every dataset; a phoneme outside it is an error, as
# a character outside ALPHABET is. " " marks espeak's word boundaries.
PHONEME_VOICE = "en-us"
PHONEMES = (
  " ",
  # Consonants ("əl", "n̩": syllabic; "ɾ": flap; "x", "ɬ", "r": loan words, spellings).
  "p",
  "b",
  "t",
  "d",
  "k",
  "ɡ",
  "ʔ",
  "f",
  "v",
  "θ",
  "ð",
  "s",
  "z",
  "ʃ",
  "ʒ",
  "h",
  "x",
  "ɬ",
  "tʃ",
  "dʒ",
  "m",
  "n",
  "ŋ",
  "n̩",
  "l",
  "əl",
  "ɹ",
  "r",
  "ɾ",
  "w",
  "j",
  # Monophthongs.
  "i",
  "iː",
  "ɪ",
  "ᵻ",
  "ɛ",
  "æ",
  "ɐ",
  "ə",
  "ɚ",
  "ɜː",
  "ʌ",
  "ʊ",
  "uː",
  "ɑː",
  "ɔ",
  "ɔː",
  # Diphthongs, triphthongs and r-coloured vowels.
  "eɪ",
  "aɪ",
  "ɔɪ",
  "aʊ",
  "oʊ",
  "iə",
  "aɪə",
  "aɪɚ",
  "ɑːɹ",
  "ɔːɹ",
  "ɛɹ",
  "ɪɹ",
  "ʊɹ",
)
_PHONEME_TO_ID = {p: i + 1 for i, p in enumerate(PHONEMES)}
_STRESS = re.compile("[ˈˌ]")
_SEPARATOR = "_"
_VOCABULARIES = {"chars": tuple(ALPHABET), "phonemes": PHONEMES}
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


def _to_ids(
  tokens: Sequence[str], table: dict[str, int], text: str, unknown: str, fix: str
) -> np.ndarray:
  """Token sequence -> int32 label ids; unknown tokens or an empty result name the transcript."""
  missing = sorted({t for t in tokens if t not in table})
  if missing:
    raise TranscriptError(f"{unknown} {missing!r} in {text!r}; {fix}")
  if not tokens:
    raise TranscriptError(f"transcript {text!r} is empty after normalisation")
  return np.array([table[t] for t in tokens], np.int32)


def encode(text: str) -> np.ndarray:
  """Normalised transcript -> int32 CTC label ids (never containing BLANK)."""
  return _to_ids(
    list(normalize(text)),
    _CHAR_TO_ID,
    text,
    "characters outside the CTC alphabet",
    "spell numbers and symbols out as words",
  )


def phonemize(text: str) -> list[str]:
  """Normalised transcript -> en-us phoneme tokens (from PHONEMES when known), stress dropped."""
  tokens = []
  for word in espeak.phonemize(normalize(text), PHONEME_VOICE, _SEPARATOR).split():
    if tokens:
      tokens.append(" ")
    # Empty pieces are espeak's zero-length pauses between linked words.
    tokens += [p for p in _STRESS.sub("", word).split(_SEPARATOR) if p]
  return tokens


def encode_phonemes(text: str) -> np.ndarray:
  """Transcript -> int32 phoneme CTC label ids (never containing BLANK)."""
  return _to_ids(
    phonemize(text),
    _PHONEME_TO_ID,
    text,
    "phonemes outside the inventory",
    "espeak-ng read part of it as another language or an odd spelling",
  )


def encode_targets(text: str, kind: str) -> np.ndarray:
  """CTC label ids of the kind `config.features.ctc_targets` names: "chars" | "phonemes"."""
  if kind == "chars":
    return encode(text)
  if kind == "phonemes":
    return encode_phonemes(text)
  raise ValueError(f"unknown CTC target kind {kind!r}; use one of {sorted(_VOCABULARIES)}")


def _joined(labels: Sequence[int], kind: str) -> str:
  """Label ids -> their tokens joined: one text form for targets and decodes, so they compare."""
  vocab = vocabulary(kind)
  return "".join(vocab[i - 1] for i in labels)


def target_text(text: str, kind: str) -> str:
  """What a perfect CTC head of `kind` transcribes for `text`: its targets' tokens joined."""
  return _joined(encode_targets(text, kind), kind)


def decode(ids: np.ndarray, kind: str) -> str:
  """Best-path CTC ids per frame -> transcript: `collapse`, then the tokens of `kind` joined."""
  return _joined(collapse(ids), kind)


def vocabulary(kind: str) -> tuple[str, ...]:
  """The tokens of label ids 1..N for `kind` (id 0 is BLANK)."""
  if kind not in _VOCABULARIES:
    raise ValueError(f"unknown CTC target kind {kind!r}; use one of {sorted(_VOCABULARIES)}")
  return _VOCABULARIES[kind]


def vocab_size(kind: str) -> int:
  """Output size of a CTC head for `kind`, blank included."""
  return len(vocabulary(kind)) + 1


def collapse(ids: np.ndarray) -> list[int]:
  """Best-path CTC decoding to label ids: merge repeats, then drop blanks."""
  out, prev = [], BLANK
  for i in np.asarray(ids).tolist():
    if i != prev and i != BLANK:
      out.append(i)
    prev = i
  return out


def ctc_alignable(labels, num_labels, output_frames):
  """Which rows CTC can align: a frame per label plus a blank between each repeated pair.

  labels [B, L] (padded), num_labels [B], output_frames [B] -> bool [B]. numpy
  in, numpy out (the TFRecord summary counts them); jax in, jax out (the loss
  masks them, since their CTC loss is infinite). The stored data does not depend
  on the model's frame rate; the step decides.
  """
  xp = jnp if isinstance(labels, jax.Array) else np
  real = xp.arange(labels.shape[1])[None, 1:] < num_labels[:, None]
  repeats = xp.sum((labels[:, 1:] == labels[:, :-1]) & real, axis=1)
  return output_frames >= num_labels + repeats


def edit_distance(a: Sequence, b: Sequence) -> int:
  """Levenshtein distance of strings or id lists; used for character and phoneme error rates."""
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]
