"""Open-vocabulary English sentences: the usage examples of WordNet 3.0's glosses.

The grammar's smart-home sentences (`stalign.data.grammar`) use ~280 words; read
English by unseen speakers needs far more varied text. WordNet 3.0 (Princeton,
permissive licence) quotes about 48,000 short examples in its glosses, e.g.

  00006269 03 n 01 life 0 002 @ 00004258 n 0000 | living things collectively;
  "the oceans are teeming with life"

`make install` extracts Debian's pinned package `wordnet-base` 1:3.0-37 (its
sha256 checked) into `.venv/share/wordnet-3.0/` (config key
`corpus.wordnet_dir`); any WordNet 3.0 `dict/` folder holds the same files.
The corpus speaks `corpus.wordnet_sentences` of them in its train split.
Pure text (the standard library), like the grammar.
"""

import os
import re

DEB_URL = "http://deb.debian.org/debian/pool/main/w/wordnet/wordnet-base_3.0-37_all.deb"
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
MIN_WORDS = 3
MAX_WORDS = 20

_QUOTED = re.compile(r'"([^"]*)"')
# Letters and apostrophes in words, spaces, and punctuation espeak-ng reads as a pause or not at
# all. Anything else (digits, brackets, semicolons, slashes, backquotes, non-ASCII) is dropped.
_ALLOWED = re.compile(r"[A-Za-z' ,.!?:\-]+")
_LEADING = " ,.!?:;-'"
_TRAILING = " ,.!?:;-"  # A trailing apostrophe stays: a plural's possessive ("the boys'").
# Read otherwise than written, or not as the transcript's letters: a period inside the sentence
# ("Mr. Smith", "e.g.", "U.S."), a single-quoted phrase ('no'; an apostrophe opening a word, or
# closing one not ending in s), a word of two or more capitals (an abbreviation: "TV", "NATO"),
# doubled punctuation.
_REJECT = re.compile(r"\.|(?:^|[\s\-])'|(?<!s)'(?:$|[\s,.!?:\-])|\b[A-Z]{2,}\b|[,.!?:\-]{2,}")
_WORD_CHARS = re.compile(r"[^a-z' ]+")


def clean(example: str) -> str | None:
  """`example` without surrounding punctuation, or None if it fails the filter.

  Kept: 3 to 20 words of ASCII letters and apostrophes, with spaces, commas,
  colons, hyphens and a final period, question or exclamation mark (stripped).
  """
  text = " ".join(example.split()).lstrip(_LEADING).rstrip(_TRAILING)
  if not text or not _ALLOWED.fullmatch(text) or _REJECT.search(text):
    return None
  if not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
    return None
  return text


def _key(text: str) -> str:
  """What the transcript normalises to, near enough: examples equal under it are duplicates."""
  return " ".join(_WORD_CHARS.sub(" ", text.lower()).split())


def example_sentences(wordnet_dir: str) -> list[str]:
  """Every quoted gloss example of the four data files that passes `clean`, deduplicated, sorted.

  Sorted (case-insensitively, then as written), so the list does not depend on
  the files' line order; of examples equal but for case and punctuation, the
  first in that order is kept.
  """
  missing = [f for f in DATA_FILES if not os.path.isfile(os.path.join(wordnet_dir, f))]
  if missing:
    raise FileNotFoundError(
      f"WordNet 3.0 data files {missing} not found in {wordnet_dir!r} (config key "
      f"corpus.wordnet_dir): `make install` fetches them, or extract usr/share/wordnet/ of "
      f"{DEB_URL} (or any WordNet 3.0 dict/ folder) there"
    )
  kept = set()
  for name in DATA_FILES:
    with open(os.path.join(wordnet_dir, name), encoding="utf-8", errors="replace") as f:
      for line in f:
        # Licence lines start with a space; a synset line's gloss follows " | ".
        if line.startswith(" ") or " | " not in line:
          continue
        gloss = line.split(" | ", 1)[1]
        for example in _QUOTED.findall(gloss):
          text = clean(example)
          if text is not None:
            kept.add(text)
  out, seen = [], set()
  for text in sorted(kept, key=lambda t: (t.lower(), t)):
    if _key(text) not in seen:
      seen.add(_key(text))
      out.append(text)
  return out
