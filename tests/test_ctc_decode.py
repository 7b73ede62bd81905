"""Transcripts from CTC log-probabilities: the best path, and a beam search under a word model."""

import importlib.metadata

import kenlm
import numpy as np
import pytest

from configs import demo
from stalign import ctc_decode
from stalign.data import text

VOCAB = ["", *text.vocabulary("chars")]  # Label id -> character; blank first.


def spelled(chars: str, doubt: dict[int, str] | None = None, p: float = 0.55) -> np.ndarray:
  """[frames, vocab] log-probabilities saying `chars`, a blank after each; at position i of
  `doubt`, the character there at `p` and the one `doubt` names at 1 - p."""
  doubt = doubt or {}
  rows = []
  for i, ch in enumerate(chars):
    row = np.full(len(VOCAB), 1e-6)
    if i in doubt:
      row[VOCAB.index(ch)], row[VOCAB.index(doubt[i])] = p, 1 - p
    else:
      row[VOCAB.index(ch)] = 1.0
    rows += [row, np.eye(len(VOCAB))[0] + 1e-6]
  probs = np.array(rows)
  return np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def decoder(lm: str, **model) -> ctc_decode.Decoder:
  config = demo.get_config("tiny")
  config.model.ctc_lm = lm
  config.model.update(model)
  return ctc_decode.Decoder(config)


@pytest.fixture(scope="module")
def english_arpa(tmp_path_factory) -> str:
  """The built-in model over its 2,000 most frequent words (the test's own, smaller and faster)."""
  path = str(tmp_path_factory.mktemp("lm") / "english.arpa")
  ctc_decode.english_bigram_arpa(path, words=2_000)
  return path


def test_the_best_path_is_the_greedy_decode():
  log_probs = spelled("the cat", doubt={5: "e"})
  assert decoder("")([log_probs]) == ["the cat"]
  assert ctc_decode.best_path(spelled("the cat", doubt={5: "e"}, p=0.45), "chars") == "the cet"


def test_the_word_model_turns_a_misheard_letter_into_the_word(english_arpa):
  """ "the cet" is the best path; under the English bigrams the beam reads "the cat"."""
  misheard = spelled("the cat", doubt={5: "e"}, p=0.45)
  assert decoder("")([misheard]) == ["the cet"]
  assert decoder(english_arpa, ctc_lm_weight=0.5)([misheard]) == ["the cat"]
  # Spelled letters are words of the model too: a spelled name stays letters.
  assert decoder(english_arpa)([spelled("r o b")]) == ["r o b"]


def test_the_english_model_sums_to_one_after_every_word(english_arpa):
  """p(b | a) over the whole vocabulary and </s>, in KenLM's reading of the written ARPA file."""
  model = kenlm.Model(english_arpa)
  words = ctc_decode.arpa_unigrams(english_arpa)
  assert len(words) == 2_000 + 24  # Its words, and the letters not among them (all but a and i).
  for first in ("the", "of", "z"):
    state, out = kenlm.State(), kenlm.State()
    model.NullContextWrite(state)
    model.BaseScore(state, first, out)
    total = sum(10 ** model.BaseScore(out, w, kenlm.State()) for w in [*words, "</s>"])
    assert total == pytest.approx(1.0, abs=1e-3), first


def test_kenlm_says_nothing_while_loading(english_arpa, capfd):
  decoder(english_arpa)([spelled("yes")])
  assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
  "content, message",
  [
    (b"\x00\xff binary \x01", "has no ARPA 1-grams section"),
    (b"\\data\\\nngram 1=0\n\n\\end\\\n", "has no ARPA 1-grams section"),
    (b"\\data\\\nngram 1=2\n\n\\1-grams:\n-1\tyes\n-1\tno\n\n\\end\\\n", "KenLM cannot read it"),
  ],
)
def test_a_file_that_is_not_an_arpa_model_names_itself(tmp_path, content, message):
  path = tmp_path / "lm.arpa"
  path.write_bytes(content)
  with pytest.raises(ctc_decode.DecodeError, match=f"model.ctc_lm='{path}'.*{message}"):
    decoder(str(path))([spelled("yes")])


def test_a_missing_lm_file_names_the_key_and_the_choices(tmp_path):
  with pytest.raises(ctc_decode.DecodeError, match="is not a file: give an ARPA file, 'english'"):
    decoder(str(tmp_path / "gone.arpa"))([spelled("yes")])


def test_the_english_model_without_symspellpy_says_how_to_install_it(monkeypatch, tmp_path):
  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "distribution", missing)
  with pytest.raises(ctc_decode.DecodeError, match="symspellpy.*not installed: `make install`"):
    ctc_decode.english_bigram_arpa(str(tmp_path / "english.arpa"))
