"""Tests of the WordNet example sentences and of the corpus's train rows that read them."""

import json
import os

import ml_collections
import pytest

from configs import demo
from stalign import config as config_lib
from stalign.data import corpus
from stalign.data import grammar
from stalign.data import wordnet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# WordNet 3.0's data files: licence lines that start with a space, then one synset a line
# (offset, lexical file, part of speech, words, pointers) with its gloss after " | ", the
# examples quoted in it and two trailing spaces. Each file's glosses:
_GLOSSES = {
  "data.noun": [
    'living things collectively; "the oceans are teeming with life"',
    'a whole of the same kind; "lard was also used, though its congener, butter, was more '
    'frequently employed"; "the American shopkeeper differs from his European congener"',
    'a human being; "there was too much for one person to do"; "The oceans are teeming, with '
    'life!"',
    "no examples at all",
  ],
  "data.verb": [
    'draw air into the lungs; "we did not understand his motivation."; "he scored 20 points"; '
    '"a moldy (or musty) odor"',
    'z; "Connect the TV so we can watch"; "henceforth she will be known as Mrs. Smith"; '
    "\"'horse' and 'hoarse' sound alike\"",
  ],
  "data.adj": [
    'having the means; "able to swim"; "she was able"; "the boys\' books were lost"; "you '
    "don't need to explain--I understand\"",
    'long; "one two three four five six seven eight nine ten eleven twelve thirteen fourteen '
    'fifteen sixteen seventeen eighteen nineteen twenty twentyone"',
  ],
  "data.adv": [
    'not applicable; "a caf\u00e9 au lait was served"; "--a well-planned scheme, it failed..."'
  ],
}
_LICENCE = (
  "  1 This software and database is being provided to you, the LICENSEE, by  \n"
  '  16 THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON  \n'
)
EXPECTED = [
  "a well-planned scheme, it failed",
  "able to swim",
  "lard was also used, though its congener, butter, was more frequently employed",
  "she was able",
  "the American shopkeeper differs from his European congener",
  "the boys' books were lost",
  "the oceans are teeming with life",
  "there was too much for one person to do",
  "we did not understand his motivation",
]


def _fake_wordnet(folder) -> str:
  os.makedirs(folder, exist_ok=True)
  for name, glosses in _GLOSSES.items():
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
      f.write(_LICENCE)
      for i, gloss in enumerate(glosses):
        f.write(f"{i:08d} 03 n 01 word 0 001 @ 00004258 n 0000 | {gloss}  \n")
  return str(folder)


def test_examples_are_quoted_filtered_stripped_deduplicated_and_sorted(tmp_path):
  assert wordnet.example_sentences(_fake_wordnet(tmp_path / "dict")) == EXPECTED


@pytest.mark.parametrize(
  "example, kept",
  [
    ("  the oceans are teeming with life. ", "the oceans are teeming with life"),
    ("Is it raining?", "Is it raining"),
    ("it doesn't seem fair: not at all", "it doesn't seem fair: not at all"),
    ("a double-barreled shotgun", "a double-barreled shotgun"),
    ("he takes pride in his son's success", "he takes pride in his son's success"),
    ("able people", None),  # Fewer than 3 words.
    (" ".join(["word"] * 21), None),  # More than 20.
    ("he scored 20 points", None),  # Digits.
    ("a moldy (or musty) odor", None),  # Brackets.
    ("be sure of it; give me the proof", None),  # Semicolon.
    ("a caf\u00e9 au lait", None),  # Non-ASCII.
    ("his parting shot was `drop dead'", None),  # Backquote.
    ("Connect the TV so we can watch", None),  # All-caps abbreviation.
    ("she will be known as Mrs. Smith", None),  # A period inside.
    ("'horse' and 'hoarse' sound alike", None),  # Single-quoted words.
    ("you don't need to explain--I understand", None),  # Doubled punctuation.
  ],
)
def test_the_filter(example, kept):
  assert wordnet.clean(example) == kept


def test_a_missing_folder_is_one_line_naming_the_folder_the_key_and_the_fix(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError) as e:
    wordnet.example_sentences(missing)
  message = str(e.value)
  assert "\n" not in message and missing in message and "corpus.wordnet_dir" in message
  assert "make install" in message and wordnet.DEB_URL in message


def _corpus_config(wordnet_dir: str, wordnet_sentences: int) -> ml_collections.ConfigDict:
  c = demo.get_config("tiny").corpus
  c.update(
    num_train=10,
    num_valid=3,
    num_test=3,
    num_zero_shot=3,
    wordnet_dir=wordnet_dir,
    wordnet_sentences=wordnet_sentences,
  )
  return c


def test_plan_adds_wordnet_train_rows_deterministically(tmp_path):
  folder = _fake_wordnet(tmp_path / "dict")
  base = corpus.plan_corpus(_corpus_config(folder, 0))
  plan = corpus.plan_corpus(_corpus_config(folder, 5))
  assert plan == corpus.plan_corpus(_corpus_config(folder, 5))
  assert {s: len(u) for s, u in plan.items()} == {
    **{s: len(u) for s, u in base.items()},
    "train": 15,
  }
  # Grammar rows are unchanged, every split but train included; the WordNet rows follow them.
  assert plan["train"][:10] == base["train"] and all(
    plan[s] == base[s] for s in base if s != "train"
  )
  extra = plan["train"][10:]
  assert [u.index for u in extra] == list(range(10, 15))
  assert len({u.text for u in extra}) == 5 and {u.text for u in extra} <= set(EXPECTED)
  config = _corpus_config(folder, 5)
  for u in extra:
    # Audio settings drawn as every row's are, from the RNG of its (seed, split, index).
    audio = corpus._audio_labels(grammar.utterance_rng(config.seed, "train", u.index, 1), config)
    assert u.labels == {"domain": "wordnet", **audio}
  other_seed = _corpus_config(folder, 5)
  other_seed.seed = 1
  assert [u.text for u in corpus.plan_corpus(other_seed)["train"][10:]] != [u.text for u in extra]
  with pytest.raises(ValueError, match=f"exceeds the {len(EXPECTED)} WordNet examples"):
    corpus.plan_corpus(_corpus_config(folder, len(EXPECTED) + 1))
  with pytest.raises(FileNotFoundError, match="corpus.wordnet_dir"):
    corpus.plan_corpus(_corpus_config(str(tmp_path / "nowhere"), 1))


def test_corpus_folder_records_wordnet_only_when_used_and_refuses_a_change(tmp_path):
  folder = _fake_wordnet(tmp_path / "dict")
  off = corpus._settings(_corpus_config(folder, 0))
  assert "wordnet_sentences" not in off and "wordnet_dir" not in off  # Folders built before match.
  on = corpus._settings(_corpus_config(folder, 5))
  assert on["wordnet_sentences"] == 5 and on["wordnet_dir"] == folder
  out = tmp_path / "corpus"
  out.mkdir()
  (out / "config.json").write_text(json.dumps(off))
  corpus._claim(str(out), off)
  with pytest.raises(ValueError, match="another config"):
    corpus._claim(str(out), on)


def test_config_validates_and_old_configs_load_without_wordnet():
  c = demo.get_config("tiny")
  c.corpus.wordnet_sentences = -1
  with pytest.raises(config_lib.ConfigError, match="corpus.wordnet_sentences=-1 must be"):
    config_lib.validate_config(c)
  saved = demo.get_config("tiny").to_dict()
  del saved["corpus"]["wordnet_sentences"], saved["corpus"]["wordnet_dir"]
  upgraded = config_lib.upgrade(ml_collections.ConfigDict(saved))
  assert upgraded.corpus.wordnet_sentences == 0
  assert upgraded.corpus.wordnet_dir == ".venv/share/wordnet-3.0"
  config_lib.validate_config(upgraded)


@pytest.mark.slow
def test_the_installed_wordnet_has_tens_of_thousands_of_sentences():
  folder = os.path.join(REPO, demo.get_config().corpus.wordnet_dir)
  if not os.path.isdir(folder):
    pytest.skip(f"{folder} is not installed (`make install`)")
  sentences = wordnet.example_sentences(folder)
  assert len(sentences) > 30_000
  assert "the oceans are teeming with life" in sentences
