from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest

from stalign.data import espeak
from stalign.data import text


def test_normalize_lowercases_and_strips_punctuation_and_accents():
  assert text.normalize("  Turn ON the Café-lights!  ") == "turn on the cafe lights"


def test_encode_decode_round_trip_and_blank_is_never_a_label():
  ids = text.encode("it's seven")
  assert text.BLANK not in ids
  # Greedy decoding of a frame sequence with repeats and blanks recovers the text.
  frames = np.concatenate([[0, i, i, 0] for i in ids])
  assert text.decode(frames, "chars") == "it's seven"


def test_encode_names_characters_outside_the_alphabet():
  with pytest.raises(text.TranscriptError, match=r"\['1', '2'\]"):
    text.encode("room 12")
  with pytest.raises(text.TranscriptError, match="empty"):
    text.encode("?!")


def test_edit_distance():
  assert text.edit_distance("kitten", "sitting") == 3
  assert text.edit_distance("", "abc") == 3


def test_phoneme_targets_are_stressless_en_us_ipa_with_word_boundaries():
  assert text.phonemize("Turn on the kitchen lights, please!") == [
    "t",
    "ɜː",
    "n",
    " ",
    "ɔ",
    "n",
    "ð",
    "ə",
    " ",
    "k",
    "ɪ",
    "tʃ",
    "ə",
    "n",
    " ",
    "l",
    "aɪ",
    "t",
    "s",
    " ",
    "p",
    "l",
    "iː",
    "z",
  ]


def test_phoneme_targets_are_deterministic_whatever_was_synthesised_before():
  first = text.encode_targets("turn off the water heater in the car", "phonemes")
  espeak.synthesize("hello there", "en-gb-x-rp", 175, 50)  # Leaves another voice selected.
  again = text.encode_targets("turn off the water heater in the car", "phonemes")
  np.testing.assert_array_equal(first, again)
  assert first.dtype == np.int32 and text.BLANK not in first


@pytest.mark.parametrize("kind", ["chars", "phonemes"])
def test_every_token_of_the_inventory_round_trips_through_its_id(kind):
  tokens = text.vocabulary(kind)
  assert len(set(tokens)) == len(tokens) and text.vocab_size(kind) == len(tokens) + 1
  ids = np.arange(1, text.vocab_size(kind))
  # A blank between ids keeps repeats apart, as CTC needs.
  frames = np.stack([ids, np.zeros_like(ids)], axis=1).ravel()
  assert text.decode(frames, kind) == "".join(tokens)


def test_encoded_phonemes_decode_to_the_phonemized_transcript():
  ids = text.encode_targets("It's seven", "phonemes")
  assert text.decode(ids, "phonemes") == "".join(text.phonemize("It's seven"))
  np.testing.assert_array_equal(
    text.encode_targets("it's seven", "chars"), text.encode("it's seven")
  )


def test_target_text_is_what_a_perfect_head_transcribes():
  assert text.target_text("Three!", "chars") == "three"
  ids = text.encode_targets("three", "phonemes")
  frames = np.stack([ids, np.zeros_like(ids)], axis=1).ravel()
  assert text.target_text("Three!", "phonemes") == text.decode(frames, "phonemes") == "θɹiː"


def test_phonemes_outside_the_inventory_and_unknown_kinds_are_named():
  with mock.patch.object(espeak, "phonemize", return_value="h_ə_l_ˈq"):
    with pytest.raises(text.TranscriptError, match=r"\['q'\]"):
      text.encode_targets("hello", "phonemes")
  with pytest.raises(text.TranscriptError, match="empty"):
    text.encode_targets("?!", "phonemes")
  with pytest.raises(ValueError, match="'words'"):
    text.encode_targets("hello", "words")


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_ctc_alignable_counts_repeats_in_numpy_and_jax(xp):
  labels = xp.array([[1, 2, 3, 0], [1, 1, 3, 0], [1, 1, 3, 0], [4, 4, 0, 0]])
  num_labels = xp.array([3, 3, 3, 1])
  frames = xp.array(
    [3, 3, 4, 1]
  )  # "1 1 3" needs a blank between the 1s; padding repeats don't count.
  np.testing.assert_array_equal(
    text.ctc_alignable(labels, num_labels, frames), [True, False, True, True]
  )
