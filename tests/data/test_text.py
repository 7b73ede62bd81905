import numpy as np
import pytest

from stalign.data import text


def test_normalize_lowercases_and_strips_punctuation_and_accents():
  assert text.normalize("  Turn ON the Café-lights!  ") == "turn on the cafe lights"


def test_encode_decode_round_trip_and_blank_is_never_a_label():
  ids = text.encode("it's seven")
  assert text.BLANK not in ids
  # Greedy decoding of a frame sequence with repeats and blanks recovers the text.
  frames = np.concatenate([[0, i, i, 0] for i in ids])
  assert text.decode_greedy(frames) == "it's seven"


def test_encode_names_characters_outside_the_alphabet():
  with pytest.raises(text.TranscriptError, match=r"\['1', '2'\]"):
    text.encode("room 12")
  with pytest.raises(text.TranscriptError, match="empty"):
    text.encode("?!")


def test_edit_distance():
  assert text.edit_distance("kitten", "sitting") == 3
  assert text.edit_distance("", "abc") == 3
