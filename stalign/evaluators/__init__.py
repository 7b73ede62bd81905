"""Evaluators by name: each takes an `Embeddings` bundle and returns a dict of figures.

`stalign.evaluate` embeds a split once and hands the same bundle to every
evaluator named in `config.eval.evaluators`. Each evaluator module keeps its
arithmetic in jitted functions of plain arrays (tested against hand or numpy
computations) and a thin registered driver that picks arrays out of the bundle.
Zero-shot classification needs class prompts rather than a split's pairs, so
`stalign.evaluate` drives it directly (`stalign.evaluators.zero_shot`).
"""

from collections.abc import Callable
import dataclasses

import numpy as np

from stalign import utils


@dataclasses.dataclass
class Embeddings:
  """Paired embeddings of one split, in the space the student was trained to match.

  speech: [N, D] student embeddings of the utterances.
  text: [G, D] teacher embeddings of the distinct transcripts (the gallery).
  text_index: [N] gallery row of each utterance's transcript.
  texts: the G distinct transcripts.
  raw_text: [G, D] teacher embeddings before centring (for gallery difficulty).
  labels: per utterance, the analysis labels its record carries (probing).
  ids: per utterance, its record id.
  layers: [depth + 1, N, width] mean-pooled frontend and block outputs of the
    student (layer-wise probes), or None.
  """

  speech: np.ndarray
  text: np.ndarray
  text_index: np.ndarray
  texts: list[str]
  raw_text: np.ndarray
  labels: list[dict] = dataclasses.field(default_factory=list)
  ids: list[str] = dataclasses.field(default_factory=list)
  layers: np.ndarray | None = None

  @property
  def paired_text(self) -> np.ndarray:
    """[N, D] the teacher embedding of each utterance's own transcript."""
    return self.text[self.text_index]


Evaluator = Callable[[Embeddings], dict]
# Each evaluator module registers itself on import.
EVALUATORS: utils.Registry[Evaluator] = utils.Registry(
  "evaluator", tuple(f"stalign.evaluators.{m}" for m in ("retrieval", "geometry", "probing"))
)
register = EVALUATORS.register
get = EVALUATORS.get
