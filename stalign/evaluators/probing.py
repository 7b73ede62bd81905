"""Linear probes: which labels can a linear classifier read off each embedding.

For every categorical label the records carry (intent, topic, tense, voice,
noise type, digit, ...), a multinomial logistic regression is fitted on
  speech: student embeddings,            text: teacher embeddings of the transcripts,
  text_to_speech_transfer: fit on text, test on speech (and speech_to_text_transfer),
  layers: mean-pooled output of the student's frontend and of every block.
Transfer is the sharp test of a shared space: a probe that only ever saw text
classifies speech as well as a speech-trained one only if the two modalities
put the same information in the same directions. Layer-wise accuracies show
where in the encoder content (intent) and acoustics (voice, noise) live.

The split is partitioned per utterance (fixed seed) into probe train / valid
/ test (60/20/20). Each probe is trained full-batch with Adam for a fixed step
budget, for each L2 strength of a small grid at once (vmapped); the strength
with the best validation accuracy of the training modality is reported on
test. Embeddings are unit-normalised and scaled by sqrt(width) (coordinates of
unit variance), never centred per modality, so transfer sees the modality gap.
The value "none" (a label that does not apply, e.g. tense of a command) and
missing values are left out of a task; "chance" is the accuracy of always
predicting the most frequent training class.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stalign.evaluators import Embeddings
from stalign.evaluators import register

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
STEPS = 200
LEARNING_RATE = 0.05
MAX_CLASSES = 64  # Labels with more values than this are identifiers, not probing tasks.
FRACTIONS = (0.6, 0.2)  # Train, valid; the rest is test.


def tasks(
  labels: Sequence[dict], max_classes: int = MAX_CLASSES
) -> dict[str, tuple[list, np.ndarray]]:
  """{label: (class values, [N] class index or -1 where missing)} for categorical labels.

  A label counts when its values are strings, ints or bools (floats are
  measurements, probed through their buckets) and it has 2..max_classes values.
  """
  keys = sorted({k for d in labels for k in d})
  out = {}
  for key in keys:
    values = [d.get(key) for d in labels]
    present = [v for v in values if v is not None and v != "none"]
    if not present or not all(isinstance(v, (str, int, bool)) for v in present):
      continue
    classes = sorted(set(present), key=str)
    if not 2 <= len(classes) <= max_classes:
      continue
    index = {c: i for i, c in enumerate(classes)}
    out[key] = (classes, np.array([index.get(v, -1) if v != "none" else -1 for v in values]))
  return out


def partition(n: int, seed: int = 0) -> np.ndarray:
  """[n] 0 (train), 1 (valid) or 2 (test) for each row: a fixed random 60/20/20 split."""
  part = np.full(n, 2)
  order = np.random.default_rng(seed).permutation(n)
  cut = np.cumsum([int(round(f * n)) for f in FRACTIONS])
  part[order[: cut[0]]], part[order[cut[0] : cut[1]]] = 0, 1
  return part


def _prepare(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12) * np.sqrt(x.shape[-1])


def _logits(params, x, class_mask):
  return jnp.where(class_mask, x @ params["w"] + params["b"], -1e9)


@jax.jit
def fit(
  x: jax.Array, y: jax.Array, weight: jax.Array, class_mask: jax.Array, l2: jax.Array
) -> dict:
  """Weighted softmax regressions, one per L2 strength in `l2`: params lead with a [len(l2)] axis.

  Args:
    x: [N, D] features.
    y: [N] class index (any value where weight is 0).
    weight: [N] 1 for training rows, 0 for rows to ignore.
    class_mask: [C] True for real classes (C is padded so shapes compile once).
    l2: [K] penalty strengths.
  """
  tx = optax.adam(LEARNING_RATE)
  y = jnp.where(weight > 0, y, 0)

  def loss(params, l2):
    ce = optax.softmax_cross_entropy_with_integer_labels(_logits(params, x, class_mask), y)
    return jnp.sum(ce * weight) / jnp.maximum(weight.sum(), 1) + l2 * jnp.sum(params["w"] ** 2)

  def one(l2):
    params = {
      "w": jnp.zeros((x.shape[1], class_mask.shape[0])),
      "b": jnp.zeros(class_mask.shape[0]),
    }

    def step(carry, _):
      params, state = carry
      grads = jax.grad(loss)(params, l2)
      updates, state = tx.update(grads, state)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=STEPS)
    return params

  return jax.vmap(one)(l2)


@jax.jit
def accuracy(
  params: dict, x: jax.Array, y: jax.Array, weight: jax.Array, class_mask: jax.Array
) -> jax.Array:
  """[K] weighted accuracy of each of the K fitted probes."""
  pred = jax.vmap(lambda p: jnp.argmax(_logits(p, x, class_mask), axis=-1))(params)
  return jnp.sum((pred == y[None]) * weight[None], axis=1) / jnp.maximum(weight.sum(), 1)


class Probe:
  """Probes for one task on a fixed train/valid/test partition."""

  def __init__(self, y: np.ndarray, num_classes: int, part: np.ndarray):
    self.y = np.maximum(y, 0).astype(np.int32)
    padded = 1 << max(num_classes - 1, 1).bit_length()  # Powers of two: few compiled shapes.
    self.class_mask = np.arange(padded) < num_classes
    self.weights = [((part == p) & (y >= 0)).astype(np.float32) for p in range(3)]
    counts = np.bincount(y[self.weights[0] > 0], minlength=num_classes)
    majority = int(np.argmax(counts))
    test = self.weights[2] > 0
    self.chance = float(np.mean(y[test] == majority)) if test.any() else float("nan")

  def run(self, train_x: np.ndarray, test_x: np.ndarray | None = None) -> float:
    """Test accuracy of a probe fitted on `train_x` (L2 by validation on it), tested on `test_x`."""
    train_x = _prepare(train_x)
    test_x = train_x if test_x is None else _prepare(test_x)
    params = fit(train_x, self.y, self.weights[0], self.class_mask, np.asarray(L2_GRID, np.float32))
    valid = np.asarray(accuracy(params, train_x, self.y, self.weights[1], self.class_mask))
    best = int(np.argmax(valid))
    test = np.asarray(accuracy(params, test_x, self.y, self.weights[2], self.class_mask))
    return float(test[best])


def probe_all(
  speech: np.ndarray,
  text: np.ndarray,
  labels: Sequence[dict],
  layers: np.ndarray | None = None,
  seed: int = 0,
) -> dict:
  """{task: {speech, text, text_to_speech_transfer, speech_to_text_transfer, chance, classes,
  examples[, layers]}} for every task `tasks(labels)` finds."""
  part = partition(len(labels), seed)
  out = {}
  for name, (classes, y) in tasks(labels).items():
    probe = Probe(y, len(classes), part)
    if not all(w.sum() for w in probe.weights):
      continue  # Too few labelled examples to train, select and test.
    result = {
      "speech": probe.run(speech),
      "text": probe.run(text),
      "text_to_speech_transfer": probe.run(text, speech),
      "speech_to_text_transfer": probe.run(speech, text),
      "chance": probe.chance,
      "classes": len(classes),
      "examples": int(np.sum(y >= 0)),
    }
    if layers is not None:
      result["layers"] = [probe.run(h) for h in layers]
    out[name] = result
  return out


@register("probing")
def evaluate(emb: Embeddings) -> dict:
  return probe_all(emb.speech, emb.paired_text, emb.labels, emb.layers)
