"""The CTC head's log-probabilities as transcripts: the best path, or a beam search under a word LM.

The student's CTC head spells what it hears letter by letter, and on readers it never heard it
misspells a third of the characters; the teacher reads "for hemanity has ane soch yunavercel
recytmistin" poorly. A beam search that prefers English words and the pairs they form
(pyctcdecode over a KenLM bigram model) reads the same frames as "for humanity has ane such
universal re cyniin": on the valid split's unseen LibriSpeech readers the word error rate fell
from 0.83 to 0.67, and the fused embedding found far more of their sentences
(docs/experiments.md, "A word language model in the CTC decode").

`model.ctc_lm` chooses: "" (the best path), "english" (the built-in model of `english_bigram_arpa`,
written from symspellpy's English word and word-pair counts on first use) or the path of an ARPA
file of the user's own (any order; KenLM reads it; local or `gs://`), with `model.ctc_lm_weight` and
`model.ctc_word_bonus` (pyctcdecode's alpha and beta) and `model.ctc_beam_width`.
"""

from collections.abc import Sequence
import contextlib
import importlib.metadata
import math
import os
import tempfile

import ml_collections
import numpy as np

from stalign import fs
from stalign.data import text as text_lib

ENGLISH = "english"  # `model.ctc_lm` naming the built-in English bigram model.

# symspellpy's English lists (MIT; counts from Google Books Ngram): 82,765 words with their
# counts, and the 243,342 most frequent word pairs.
_WORDS = "symspellpy/frequency_dictionary_en_82_765.txt"
_PAIRS = "symspellpy/frequency_bigramdictionary_en_243_342.txt"


class DecodeError(ValueError):
  """A language model that cannot be read or used: says which file and what to do."""


def best_path(log_probs: np.ndarray, kind: str) -> str:
  """[frames, vocab] CTC log-probabilities -> the best path's transcript (`text.decode`)."""
  return text_lib.decode(np.argmax(log_probs, axis=-1), kind)


class Decoder:
  """Transcribes CTC log-probabilities as `model.ctc_lm` says: best path, or beam search with an LM.

  The language model is read on the first call, so a model that never transcribes never pays
  for it.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.kind = config.features.ctc_targets
    self.lm = config.model.ctc_lm
    self.lm_weight = config.model.ctc_lm_weight
    self.word_bonus = config.model.ctc_word_bonus
    self.beam_width = config.model.ctc_beam_width
    self._beam = None

  def __call__(self, log_probs: Sequence[np.ndarray]) -> list[str]:
    """Per input, [frames, vocab] log-probabilities (blank first) -> its transcript."""
    if not self.lm:
      return [best_path(lp, self.kind) for lp in log_probs]
    if self._beam is None:
      self._beam = _beam_decoder(self.lm, self.lm_weight, self.word_bonus)
    return [
      self._beam.decode(np.asarray(lp, np.float32), beam_width=self.beam_width).strip()
      for lp in log_probs
    ]


def _beam_decoder(lm: str, lm_weight: float, word_bonus: float):
  """pyctcdecode's beam search over the character vocabulary, scored by KenLM reading `lm`."""
  import kenlm  # noqa: PLC0415 (only a beam decode needs KenLM and pyctcdecode)
  from pyctcdecode import alphabet as alphabet_lib  # noqa: PLC0415
  from pyctcdecode import decoder as decoder_lib  # noqa: PLC0415
  from pyctcdecode import language_model  # noqa: PLC0415

  labels = ["", *text_lib.vocabulary("chars")]  # pyctcdecode's blank is "".
  with _arpa_file(lm) as path:
    unigrams = arpa_unigrams(path)
    config = kenlm.Config()
    config.show_progress = False
    try:
      with _quiet_stderr():  # KenLM advises building a binary for every ARPA file it reads.
        model = kenlm.Model(path, config)
    except (OSError, RuntimeError) as e:
      raise DecodeError(
        f"model.ctc_lm={lm!r}: KenLM cannot read it as an ARPA file ({e}); give an ARPA file, "
        f"{ENGLISH!r} for the built-in English model, or '' for the best path"
      ) from None
  scorer = language_model.LanguageModel(model, unigrams, alpha=lm_weight, beta=word_bonus)
  return decoder_lib.BeamSearchDecoderCTC(alphabet_lib.Alphabet.build_alphabet(labels), scorer)


def names_file(lm: str) -> bool:
  """Whether `model.ctc_lm=lm` is the path of an ARPA file, not '' (best path) or `ENGLISH`."""
  return lm not in ("", ENGLISH)


def check_word_model(lm: str) -> None:
  """Raises `DecodeError` unless `model.ctc_lm=lm` names a decode: '', `ENGLISH`, or a file.

  The one check of the name, made by config validation for a local file (a bad path stops
  before training) and at the first decode for any file (a `gs://` one too).
  """
  if not names_file(lm) or fs.isfile(lm):
    return
  raise DecodeError(
    f"model.ctc_lm={lm!r} is not a file: give an ARPA file, {ENGLISH!r} for the built-in "
    "English model, or '' for the best path"
  )


@contextlib.contextmanager
def _arpa_file(lm: str):
  """A local file name of `lm`'s model: the built-in one written to a temporary file, or the
  user's file (a `gs://` one downloaded, as KenLM reads local files only)."""
  if lm == ENGLISH:
    with tempfile.TemporaryDirectory(prefix="stalign-lm-") as folder:
      path = os.path.join(folder, "english.arpa")
      english_bigram_arpa(path)
      yield path
    return
  check_word_model(lm)
  with fs.local_copy(lm) as path:
    yield path


@contextlib.contextmanager
def _quiet_stderr():
  """File descriptor 2 pointed at /dev/null: KenLM's C++ writes there, not to sys.stderr."""
  saved = os.dup(2)
  with open(os.devnull, "w") as null:
    os.dup2(null.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def arpa_unigrams(path: str) -> list[str]:
  """The words of an ARPA file's 1-grams (without <s>, </s>, <unk>): the beam's vocabulary."""
  words, inside = [], False
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.startswith("\\1-grams:"):
          inside = True
        elif inside and line.startswith("\\"):
          break
        elif inside and line.strip():
          word = line.split("\t")[1].strip()
          if word not in ("<s>", "</s>", "<unk>"):
            words.append(word)
  except (UnicodeDecodeError, IndexError):
    words = []
  if not words:
    raise DecodeError(
      f"model.ctc_lm={path!r} has no ARPA 1-grams section: give an ARPA text file (KenLM's "
      f"binary files do not list their words), {ENGLISH!r} or ''"
    )
  return words


def english_bigram_arpa(
  path: str,
  words: int = 40_000,
  letter_share: float = 1e-4,
  unigram_share: float = 0.5,
  sentence_end: float = 0.05,
) -> None:
  """Writes an English word-bigram model in ARPA format from symspellpy's counts.

  The `words` most frequent words, and each of the 26 letters at `letter_share` of the words'
  mass (spelled letters, as AN4's speakers spell names, are words too); the listed word pairs
  between them, interpolated with the unigrams: p(b | a) = (1 - u) c(a, b) / c(a) + u p(b),
  u = `unigram_share`, c(a) the count of pairs listed after a. The lists keep only the pairs seen
  6.4 million times or more, so half the mass stays with the unigrams. In ARPA's back-off form
  a pair not listed costs a's back-off weight u times p(b): the model sums to one after every
  word. `sentence_end` is p(</s>).
  """
  counts = {}
  with open(_symspell_file(_WORDS), encoding="utf-8") as f:
    for line in f:
      word, count = line.split()
      counts[word] = int(count)
      if len(counts) == words:
        break
  mass = sum(counts.values())
  for letter in "abcdefghijklmnopqrstuvwxyz":
    counts.setdefault(letter, letter_share * mass)
  total = sum(counts.values())
  unigram = {w: (1 - sentence_end) * c / total for w, c in counts.items()}
  pairs: dict[str, dict[str, int]] = {}
  with open(_symspell_file(_PAIRS), encoding="utf-8") as f:
    for line in f:
      a, b, count = line.split()
      if a in unigram and b in unigram:
        pairs.setdefault(a, {})[b] = int(count)
  backoff = f"\t{math.log10(unigram_share):.6f}"
  with open(path, "w", encoding="utf-8") as out:
    out.write(f"\\data\\\nngram 1={len(unigram) + 3}\nngram 2={sum(map(len, pairs.values()))}\n\n")
    out.write(f"\\1-grams:\n-99\t<s>\t0\n{math.log10(sentence_end):.6f}\t</s>\n")
    out.write(f"{math.log10(1e-9):.6f}\t<unk>\n")
    for word, p in unigram.items():
      out.write(f"{math.log10(p):.6f}\t{word}{backoff if word in pairs else ''}\n")
    out.write("\n\\2-grams:\n")
    for a, row in pairs.items():
      seen = sum(row.values())
      for b, count in row.items():
        p = (1 - unigram_share) * count / seen + unigram_share * unigram[b]
        out.write(f"{math.log10(p):.6f}\t{a} {b}\n")
    out.write("\n\\end\\\n")


def _symspell_file(name: str) -> str:
  """A data file of the installed symspellpy wheel, found without importing the package."""
  try:
    path = str(importlib.metadata.distribution("symspellpy").locate_file(name))
  except importlib.metadata.PackageNotFoundError:
    path = ""
  if not os.path.isfile(path):
    raise DecodeError(
      f"model.ctc_lm={ENGLISH!r} is built from symspellpy's {os.path.basename(name)}, which is "
      "not installed: `make install` (or `pip install symspellpy`), or set model.ctc_lm=''"
    )
  return path
