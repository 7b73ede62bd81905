"""Training losses: distillation to the teacher, in-batch contrastive, and CTC.

Distillation alone collapses to the mean teacher embedding on small data (the
mean has cosine 0.36 to every MiniLM target; calibration.md). Centring the
targets removes that free minimum, and the in-batch InfoNCE term rewards
telling utterances apart, which is what retrieval measures.
"""

import jax
import jax.numpy as jnp
import optax

from stalign.data import text as text_lib
from stalign.utils import unit


def cosine_distillation(student: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
  cos = jnp.sum(unit(student) * unit(target), axis=-1)
  return jnp.sum((1.0 - cos) * weights) / jnp.maximum(weights.sum(), 1)


def mse_distillation(student: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
  err = jnp.mean((student - target) ** 2, axis=-1)
  return jnp.sum(err * weights) / jnp.maximum(weights.sum(), 1)


def info_nce(
  student: jax.Array, target: jax.Array, log_temperature: jax.Array, weights: jax.Array
) -> jax.Array:
  """Symmetric in-batch contrastive loss (CLIP/CLAP style).

  Utterances of the same transcript have identical targets, so their logits
  tie and the loss cannot separate them whatever the targets say. Soft targets
  (uniform over the tied columns) make each row's target match that tie; with
  equal row weights the batch loss equals the one-hot one, and with unequal
  weights it does not favour one copy of a repeated transcript.
  """
  s, t = unit(student), unit(target)
  logits = s @ t.T / jnp.exp(log_temperature)
  same = (t @ t.T > 0.9999) & (weights[:, None] > 0) & (weights[None, :] > 0)
  targets = same / jnp.maximum(same.sum(axis=1, keepdims=True), 1)
  valid = jnp.where(weights[None, :] > 0, 0.0, -1e9)
  s2t = optax.softmax_cross_entropy(logits + valid, targets)
  t2s = optax.softmax_cross_entropy(logits.T + valid, targets.T)
  return jnp.sum((s2t + t2s) * 0.5 * weights) / jnp.maximum(weights.sum(), 1)


def bank_nce(
  student: jax.Array,
  target: jax.Array,
  bank: jax.Array,
  log_temperature: jax.Array,
  weights: jax.Array,
) -> jax.Array:
  """Each utterance against every distinct training transcript (speech -> text).

  In-batch negatives are mostly easy: in a batch of 64 random sentences the
  near-duplicates that retrieval must tell apart (the same command in another
  room, another number) rarely meet. A bank of all training transcripts' targets
  holds every such hard negative and costs one [batch, bank] matmul. The
  positive is the bank row equal to the utterance's target; rows whose target
  is not in the bank (never the case in training) are left out.
  """
  s, b = unit(student), unit(bank)
  logits = s @ b.T / jnp.exp(log_temperature)
  positive = (unit(target) @ b.T) > 0.9999
  weights = weights * positive.any(axis=1)
  soft = positive / jnp.maximum(positive.sum(axis=1, keepdims=True), 1)
  per_utt = optax.softmax_cross_entropy(logits, soft)
  return jnp.sum(per_utt * weights) / jnp.maximum(weights.sum(), 1)


def ctc(
  logits: jax.Array,
  frame_mask: jax.Array,
  labels: jax.Array,
  num_labels: jax.Array,
  weights: jax.Array,
) -> jax.Array:
  """optax CTC, averaged per target character over the utterances that can be aligned."""
  label_pad = (jnp.arange(labels.shape[1])[None, :] >= num_labels[:, None]).astype(jnp.float32)
  per_utt = optax.ctc_loss(logits, 1.0 - frame_mask.astype(jnp.float32), labels, label_pad)
  weights = weights * text_lib.ctc_alignable(labels, num_labels, frame_mask.sum(axis=1))
  per_utt = jnp.where(weights > 0, per_utt, 0.0)  # Unalignable rows are inf; keep grads finite.
  return jnp.sum(per_utt * weights) / jnp.maximum(jnp.sum(num_labels * weights), 1)


def greedy_ctc_ids(logits: jax.Array, frame_mask: jax.Array) -> jax.Array:
  """Best-path ids per frame (blank=0 in padding); `text.collapse` turns them into labels."""
  return jnp.where(frame_mask, jnp.argmax(logits, axis=-1), 0)
