import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stalign import losses


def test_cosine_distillation_is_zero_for_parallel_and_ignores_padding_rows():
  """The padding row points the other way: only its weight of 0 keeps it out of the mean."""
  t = jnp.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
  w = jnp.array([1.0, 1.0, 0.0])
  flip_padding = jnp.array([[1.0], [1.0], [-1.0]])
  assert float(losses.cosine_distillation(3 * t * flip_padding, t, w)) < 1e-6
  assert abs(float(losses.cosine_distillation(-t * flip_padding, t, w)) - 2.0) < 1e-6


def _info_nce_reference(student, target, temperature, weights, soft):
  """Symmetric InfoNCE in numpy; `soft` makes every row with an equal target a positive."""
  s = student / np.linalg.norm(student, axis=1, keepdims=True)
  t = target / np.linalg.norm(target, axis=1, keepdims=True)
  logits = s @ t.T / temperature
  same = (target[:, None] == target[None]).all(-1) if soft else np.eye(len(target), dtype=bool)
  labels = same / same.sum(axis=1, keepdims=True)

  def cross_entropy(z, p):
    z = z - z.max(axis=1, keepdims=True)
    return -(p * (z - np.log(np.exp(z).sum(axis=1, keepdims=True)))).sum(axis=1)

  per_row = 0.5 * (cross_entropy(logits, labels) + cross_entropy(logits.T, labels.T))
  return np.sum(weights * per_row) / np.sum(weights)


def test_info_nce_prefers_matched_pairs_and_treats_duplicates_as_positives():
  """Two utterances of one transcript share a target: each is a positive for both.

  With equal row weights soft and one-hot targets give the same batch mean (the
  duplicates' per-row differences cancel), so row 0 counts twice here to expose them.
  """
  rng = np.random.default_rng(0)
  t = rng.standard_normal((6, 8)).astype(np.float32)
  log_t = jnp.log(0.1)
  good = losses.info_nce(jnp.asarray(t), jnp.asarray(t), log_t, jnp.ones(6))
  shuffled = losses.info_nce(jnp.asarray(t[::-1]), jnp.asarray(t), log_t, jnp.ones(6))
  assert float(good) < float(shuffled)
  target = t.copy()
  target[1] = target[0]
  student = t + 0.5 * rng.standard_normal(t.shape).astype(np.float32)  # Every row differs.
  w = np.array([2, 1, 1, 1, 1, 1], np.float32)
  got = float(losses.info_nce(jnp.asarray(student), jnp.asarray(target), log_t, jnp.asarray(w)))
  soft = _info_nce_reference(student, target, 0.1, w, soft=True)
  np.testing.assert_allclose(got, soft, rtol=1e-5)
  assert abs(soft - _info_nce_reference(student, target, 0.1, w, soft=False)) > 1e-3


def test_bank_nce_is_cross_entropy_over_the_bank_and_skips_targets_outside_it():
  """Row i's positive is the bank row equal to its target; a target not in the bank adds nothing."""
  rng = np.random.default_rng(1)
  bank = rng.standard_normal((20, 8)).astype(np.float32)
  target = bank[[3, 7, 7, 11]].copy()
  target[3] = rng.standard_normal(8)  # Not in the bank.
  student = target + 0.3 * rng.standard_normal(target.shape).astype(np.float32)
  w = np.array([1, 2, 1, 5], np.float32)
  got = losses.bank_nce(*map(jnp.asarray, (student, target, bank)), jnp.log(0.1), jnp.asarray(w))

  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  logits = unit(student) @ unit(bank).T / 0.1
  log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
  log_p -= logits.max(1, keepdims=True)
  per_row = -log_p[np.arange(3), [3, 7, 7]]
  np.testing.assert_allclose(float(got), np.sum(w[:3] * per_row) / w[:3].sum(), rtol=1e-5)
  shuffled = losses.bank_nce(
    *map(jnp.asarray, (student[::-1], target, bank)), jnp.log(0.1), jnp.asarray(w)
  )
  assert float(got) < float(shuffled)


def test_ctc_matches_optax_per_character_and_masks_unalignable():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((2, 10, 5)), jnp.float32)
  mask = jnp.ones((2, 10), bool)
  labels = jnp.array([[1, 2, 3, 0], [2, 2, 0, 0]])
  num = jnp.array([3, 2])
  pad = (jnp.arange(4)[None] >= num[:, None]).astype(jnp.float32)
  ref = optax.ctc_loss(logits, jnp.zeros((2, 10)), labels, pad)
  got = losses.ctc(logits, mask, labels, num, jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(got, ref[0] / 3, rtol=1e-5)
  # Too few frames for "2 2" (needs a blank between): that row is dropped, not infinite.
  short = mask.at[1, 2:].set(False)
  both = losses.ctc(logits, short, labels, num, jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(both, ref[0] / 3, rtol=1e-5)


def test_compute_losses_weighs_the_parts_the_config_turns_on_against_centred_targets():
  rng = np.random.default_rng(0)
  embedding, teacher = rng.standard_normal((2, 4, 3), np.float32)
  batch = {"teacher": teacher, "weight": np.array([1.0, 1.0, 1.0, 0.0], np.float32)}
  mean = np.float32([0.5, -0.5, 0.0])
  loss = ml_collections.ConfigDict(
    {
      "distill": "mse",
      "distill_weight": 0.5,
      "contrastive_weight": 2.0,
      "bank_weight": 3.0,
      "ctc_weight": 0.0,
      "centre_targets": True,
    }
  )
  log_t = jnp.log(0.1)
  outputs = {"embedding": embedding}
  total, parts = losses.compute_losses(outputs, batch, mean, loss, log_t)
  assert set(parts) == {"distill", "contrastive"}  # No bank given: no bank term.
  target = teacher - mean
  np.testing.assert_allclose(
    parts["distill"], losses.mse_distillation(embedding, target, batch["weight"])
  )
  np.testing.assert_allclose(total, 0.5 * parts["distill"] + 2.0 * parts["contrastive"], rtol=1e-6)
  total, parts = losses.compute_losses(outputs, batch, mean, loss, log_t, text_bank=teacher)
  np.testing.assert_allclose(
    parts["bank"], losses.bank_nce(embedding, target, target, log_t, batch["weight"]), rtol=1e-6
  )
  np.testing.assert_allclose(
    total, 0.5 * parts["distill"] + 2.0 * parts["contrastive"] + 3.0 * parts["bank"], rtol=1e-6
  )
  loss.centre_targets = False
  np.testing.assert_array_equal(losses.targets(batch, mean, loss), teacher)
