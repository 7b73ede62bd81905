"""Evaluators by name: each takes an `Embeddings` bundle and returns a flat dict of figures.

`stalign.evaluate` embeds a split once and hands the same bundle to every
evaluator named in `config.eval.evaluators`.
"""
from collections.abc import Callable
import dataclasses

import numpy as np


@dataclasses.dataclass
class Embeddings:
  """Paired embeddings of one split, in the space the student was trained to match.

  speech: [N, D] student embeddings of the utterances.
  text: [G, D] teacher embeddings of the distinct transcripts (the gallery).
  text_index: [N] gallery row of each utterance's transcript.
  texts: the G distinct transcripts.
  """
  speech: np.ndarray
  text: np.ndarray
  text_index: np.ndarray
  texts: list[str]
  raw_text: np.ndarray  # Teacher embeddings before centring (for gallery difficulty).


Evaluator = Callable[[Embeddings], dict]
_REGISTRY: dict[str, Evaluator] = {}


def register(name: str) -> Callable[[Evaluator], Evaluator]:
  def wrap(fn: Evaluator) -> Evaluator:
    _REGISTRY[name] = fn
    return fn
  return wrap


def get(name: str) -> Evaluator:
  from stalign.evaluators import retrieval  # noqa: F401  (registers itself)
  if name not in _REGISTRY:
    raise KeyError(f"unknown evaluator {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name]
