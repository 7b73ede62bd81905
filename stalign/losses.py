"""Training losses: distillation to the teacher, contrastive (in-batch and against a bank), CTC,
and their composition into the one loss a config asks for (`compute_losses`).

Distillation alone collapses to the mean teacher embedding on small data (the
mean has cosine 0.36 to every MiniLM target; calibration.md). Centring the
targets removes that free minimum, and the in-batch InfoNCE term rewards
telling utterances apart, which is what retrieval measures.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from stalign.data import text as text_lib
from stalign.utils import unit


def _weighted_mean(per_row: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean over the rows by weight; padding rows (weight 0) count for nothing."""
  return jnp.sum(per_row * weights) / jnp.maximum(weights.sum(), 1)


def cosine_distillation(student: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
  cos = jnp.sum(unit(student) * unit(target), axis=-1)
  return _weighted_mean(1.0 - cos, weights)


def mse_distillation(student: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
  return _weighted_mean(jnp.mean((student - target) ** 2, axis=-1), weights)


# ------------------------------------------------------------- contrastive
# Both contrastive losses score each utterance against a gallery of text targets (the batch's
# own, or a bank of every training transcript's) and take as positives the gallery entries
# equal to the utterance's target: one transcript may stand there several times.


def _against_gallery(
  student: jax.Array, target: jax.Array, gallery: jax.Array, log_temperature: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(scaled cosine logits [utterance, entry], positives: entries in the target's direction)."""
  s, g = unit(student), unit(gallery)
  logits = s @ g.T / jnp.exp(log_temperature)
  return logits, (unit(target) @ g.T) > 0.9999


def _soft_targets(positive: jax.Array) -> jax.Array:
  """Each row's probability spread evenly over its positives (all 0 for a row with none)."""
  return positive / jnp.maximum(positive.sum(axis=1, keepdims=True), 1)


def info_nce(
  student: jax.Array, target: jax.Array, log_temperature: jax.Array, weights: jax.Array
) -> jax.Array:
  """Symmetric in-batch contrastive loss (CLIP/CLAP style): the batch's targets are the gallery.

  Utterances of the same transcript have identical targets, so their logits
  tie and the loss cannot separate them whatever the targets say. Soft targets
  (uniform over the tied columns) make each row's target match that tie; with
  equal row weights the batch loss equals the one-hot one, and with unequal
  weights it does not favour one copy of a repeated transcript.
  """
  logits, same = _against_gallery(student, target, target, log_temperature)
  real = weights > 0
  targets = _soft_targets(same & real[:, None] & real[None, :])
  valid = jnp.where(real[None, :], 0.0, -1e9)  # Padding columns drop out of every softmax.
  s2t = optax.softmax_cross_entropy(logits + valid, targets)
  t2s = optax.softmax_cross_entropy(logits.T + valid, targets.T)
  return _weighted_mean((s2t + t2s) * 0.5, weights)


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
  logits, positive = _against_gallery(student, target, bank, log_temperature)
  per_utt = optax.softmax_cross_entropy(logits, _soft_targets(positive))
  return _weighted_mean(per_utt, weights * positive.any(axis=1))


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


# ------------------------------------------------------------- composition


def targets(
  batch: dict, target_mean: jax.Array, loss_config: ml_collections.ConfigDict
) -> jax.Array:
  """What the student's embedding is pulled towards: the teacher's, centred or raw."""
  return batch["teacher"] - target_mean if loss_config.centre_targets else batch["teacher"]


def compute_losses(
  outputs: dict,
  batch: dict,
  target_mean: jax.Array,
  loss_config: ml_collections.ConfigDict,
  log_temperature: jax.Array,
  text_bank: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
  """Weighted sum of the loss parts, and each part for logging.

  The one place where the `loss` section of a config becomes a loss: the train
  and eval steps and the benchmarks (`bench/train_step.py`) all compose it here.
  `text_bank` (the raw teacher embeddings of every distinct training
  transcript) turns on the bank term when `loss.bank_weight` > 0.
  """
  weights = batch["weight"]
  target = targets(batch, target_mean, loss_config)
  parts = {}
  if loss_config.distill == "cosine":
    parts["distill"] = cosine_distillation(outputs["embedding"], target, weights)
  elif loss_config.distill == "mse":
    parts["distill"] = mse_distillation(outputs["embedding"], target, weights)
  elif loss_config.distill != "none":
    raise ValueError(f"loss.distill={loss_config.distill!r}; use 'cosine', 'mse' or 'none'")
  if loss_config.contrastive_weight:
    parts["contrastive"] = info_nce(outputs["embedding"], target, log_temperature, weights)
  if loss_config.bank_weight and text_bank is not None:
    bank = text_bank - target_mean if loss_config.centre_targets else text_bank
    parts["bank"] = bank_nce(outputs["embedding"], target, bank, log_temperature, weights)
  if loss_config.ctc_weight:
    parts["ctc"] = ctc(
      outputs["ctc_logits"], outputs["ctc_mask"], batch["ctc_labels"], batch["num_labels"], weights
    )
  scale = {
    "distill": loss_config.distill_weight,
    "contrastive": loss_config.contrastive_weight,
    "bank": loss_config.bank_weight,
    "ctc": loss_config.ctc_weight,
  }
  total = sum(scale[k] * v for k, v in parts.items())
  return total, parts
