import jax.numpy as jnp
import numpy as np
import optax

from stalign import losses


def test_cosine_distillation_is_zero_for_parallel_and_ignores_padding_rows():
  t = jnp.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
  w = jnp.array([1.0, 1.0, 0.0])
  assert float(losses.cosine_distillation(3 * t, t, w)) < 1e-6
  assert abs(float(losses.cosine_distillation(-t, t, w)) - 2.0) < 1e-6


def test_info_nce_prefers_matched_pairs_and_treats_duplicates_as_positives():
  rng = np.random.default_rng(0)
  t = jnp.asarray(rng.standard_normal((6, 8)), jnp.float32)
  w = jnp.ones(6)
  good = losses.info_nce(t, t, jnp.log(0.1), w)
  shuffled = losses.info_nce(t[::-1], t, jnp.log(0.1), w)
  assert float(good) < float(shuffled)
  # Two utterances of one transcript: swapping them costs nothing.
  t2 = t.at[1].set(t[0])
  s = t2.at[0].set(t2[1])
  np.testing.assert_allclose(
    losses.info_nce(s, t2, jnp.log(0.1), w), losses.info_nce(t2, t2, jnp.log(0.1), w), rtol=1e-6
  )


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
