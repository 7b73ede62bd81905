"""What a synthetic corpus holds, for its `summary.json`: counts, hours, domains, lexicon and
how near each split's sentences come to the train split's (`stalign.data.corpus` writes it).
"""

from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import numpy as np

from stalign.data import grammar


def _wildcards(words: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
  for i in range(len(words)):
    yield words[:i] + ("*",) + words[i + 1 :]


def _deletions(words: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
  for i in range(len(words)):
    yield words[:i] + words[i + 1 :]


def near_duplicates(texts: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
  """Fractions of `texts` equal to, or one word edit from, a reference text.

  Hash lookups of every one-word substitution and deletion replace an
  all-pairs edit distance, which would take minutes for the demo sizes.
  """
  ref = {tuple(t.split()) for t in reference}
  substituted = {k for words in ref for k in _wildcards(words)}
  shortened = {k for words in ref for k in _deletions(words)}
  exact = near = 0
  for text in texts:
    words = tuple(text.split())
    exact += words in ref
    near += (
      words in ref
      or words in shortened
      or any(k in substituted for k in _wildcards(words))
      or any(k in ref for k in _deletions(words))
    )
  n = max(len(texts), 1)
  return {"exact": exact / n, "within_one_word": near / n}


def lexicon_stats(texts: dict[str, list[str]]) -> dict[str, Any]:
  train_counts: dict[str, int] = {}
  for text in texts["train"]:
    for word in text.split():
      train_counts[word] = train_counts.get(word, 0) + 1
  all_words = {w for split in texts.values() for t in split for w in t.split()}
  frequencies = sorted(train_counts.values()) or [0]
  return {
    "word_types": len(all_words),
    "train_word_types": len(train_counts),
    "train_tokens": sum(frequencies),
    "median_train_word_frequency": float(np.median(frequencies)),
    "min_train_word_frequency": frequencies[0],
    "words_unseen_in_train": {
      split: sorted({w for t in texts[split] for w in t.split()} - train_counts.keys())
      for split in texts
      if split != "train"
    },
  }


def summary(
  manifests: dict[str, list[dict[str, Any]]],
  settings: dict[str, Any],
  wall: float,
  rendered_seconds: float,
  rendered: int,
) -> dict[str, Any]:
  splits = tuple(manifests)
  texts = {s: [m["text"] for m in manifests[s]] for s in splits}
  seconds = {s: sum(m["duration"] for m in manifests[s]) for s in splits}
  total = sum(seconds.values())
  domains = {s: {} for s in splits}
  for split in splits:
    for m in manifests[split]:
      d = m["labels"]["domain"]
      domains[split][d] = domains[split].get(d, 0) + 1
  descriptions = grammar.intent_descriptions()
  return {
    "counts": {s: len(manifests[s]) for s in splits},
    "hours": {**{s: seconds[s] / 3600 for s in splits}, "total": total / 3600},
    "mean_duration_seconds": total / max(sum(map(len, texts.values())), 1),
    "domains": domains,
    "wall_seconds": wall,
    "rendered_utterances": rendered,
    # Audio rendered by this call per second of its wall time.
    "real_time_factor": rendered_seconds / wall,
    "distinct_sentences": len({t for ts in texts.values() for t in ts}),
    "lexicon": lexicon_stats(texts),
    "near_duplicates_of_train": {
      s: near_duplicates(texts[s], texts["train"]) for s in splits if s != "train"
    },
    "held_out_intents": {i: descriptions[i] for i in grammar.HELD_OUT_INTENTS},
    "intent_descriptions": descriptions,
    "config": settings,
  }
