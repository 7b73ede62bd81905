"""Zero-shot classification: classes described in text, utterances assigned to the nearest class.

A class's embedding is the normalised mean of its prompts' unit embeddings
(CLIP-style prompt ensembling), with prompts made from several templates, so
no single phrasing decides the result. Prompts go through the teacher and the
same centring as the training targets, which puts them where the student
puts speech. Nothing is trained: a class the student never heard as a label
(the corpus's held-out intents, or digits for a model trained on sentences)
is recognised only if speech and text meaning really share the space.
"""

from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stalign.utils import unit


def class_embeddings(
  embed_text: Callable[[list[str]], np.ndarray],
  descriptions: Sequence[str],
  templates: Sequence[str],
) -> np.ndarray:
  """[C, D] unit class embeddings, each the renormalised mean over its prompt templates.

  `templates` hold "{}" for the class description (`eval.zero_shot_templates`).
  """
  prompts = [t.format(d) for d in descriptions for t in templates]
  e = unit(embed_text(prompts)).reshape(len(descriptions), len(templates), -1)
  return unit(e.mean(axis=1))


@jax.jit
def predict(speech: jax.Array, classes: jax.Array) -> jax.Array:
  """[N] index of the class with the highest cosine to each utterance."""
  return jnp.argmax(unit(speech) @ unit(classes).T, axis=1)


def evaluate(
  speech: np.ndarray,
  targets: np.ndarray,
  classes: np.ndarray,
  names: Sequence[str],
  groups: Sequence[str] | None = None,
) -> dict:
  """Accuracy overall, per class, per group (e.g. speaker) and the confusion matrix.

  Args:
    speech: [N, D] utterance embeddings.
    targets: [N] true class index of each utterance.
    classes: [C, D] class embeddings (`class_embeddings`).
    names: the C class names, used as keys.
    groups: optional group of each utterance (speaker, voice).

  Returns:
    accuracy, chance (1 / C), utterances, classes, per_class, confusion
    (rows true, columns predicted, in `names` order) and, with groups,
    per_group {group: {accuracy, utterances}}.
  """
  targets = np.asarray(targets)
  pred = np.asarray(predict(speech, classes))
  correct = pred == targets
  confusion = np.zeros((len(names), len(names)), np.int64)
  np.add.at(confusion, (targets, pred), 1)
  out = {
    "accuracy": float(correct.mean()),
    "chance": 1.0 / len(names),
    "utterances": int(len(targets)),
    "classes": list(names),
    "per_class": {
      n: float(correct[targets == i].mean()) for i, n in enumerate(names) if np.any(targets == i)
    },
    "confusion": confusion.tolist(),
  }
  if groups is not None:
    groups = np.asarray(groups)
    out["per_group"] = {
      str(g): {
        "accuracy": float(correct[groups == g].mean()),
        "utterances": int(np.sum(groups == g)),
      }
      for g in sorted(set(groups))
    }
  return out
