"""`model.remat` over the tuned Whisper blocks: the same loss and gradients, less kept memory.

On the tiny random Hugging Face checkpoint (tests/fixtures/whisper_tiny_hf, 2 blocks of width
64): the blocks alone, and the whole student's training loss through `train_steps.loss_fn`. Equal
numbers alone would also pass if the flag were ignored, so each test also counts the
rematerialised calls (the primitive of `jax.checkpoint` / `nnx.remat`: `remat2` in JAX 0.10, whose
gradient program recomputes each one in the backward pass) in the program: one per tuned block.
"""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from stalign import config as config_lib
from stalign import train_steps
from stalign.data import text as text_lib
from stalign.models import student
from stalign.models import whisper
from stalign.models import whisper_weights

HF_FOLDER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "whisper_tiny_hf")


def _count_remat(jaxpr) -> int:
  """Rematerialised calls in a jaxpr, in its sub-jaxprs (jit, scan, custom_vjp) included."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name in ("checkpoint", "remat2")  # Its name differs across JAX.
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, "jaxpr", sub)  # A ClosedJaxpr's Jaxpr, or a Jaxpr itself.
        if hasattr(inner, "eqns"):
          count += _count_remat(inner)
  return count


def _loss_and_grads(fn, params):
  """(loss, grads) of `fn(params)`, and the rematerialised calls in its gradient's program."""
  grad_fn = jax.value_and_grad(fn)
  loss, grads = jax.jit(grad_fn)(params)
  return loss, grads, _count_remat(jax.make_jaxpr(grad_fn)(params).jaxpr)


def _assert_same(a, b):
  (loss_a, grads_a), (loss_b, grads_b) = a, b
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  # The same operations, fused differently around the recomputation: float32 rounding, far
  # below 1e-5 of the largest gradient (the key projection's bias, which softmax ignores, has
  # a gradient of pure rounding noise); a dropped mask or block would differ by its whole size.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_b))
  for x, y in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads_a))  # Gradients flow.


def test_remat_blocks_give_the_same_loss_and_gradients():
  flat, dims = whisper_weights.load(HF_FOLDER)
  x = jax.random.normal(jax.random.key(0), (2, 24, dims.width))
  mask = jnp.arange(24)[None, :] < jnp.array([24, 15])[:, None]  # The second clip is padded.

  def run(remat: bool):
    blocks = whisper.Blocks(dims, 0, dims.layers, nnx.Rngs(0), remat=remat)
    whisper.load_pretrained(blocks, flat)
    graphdef, params = nnx.split(blocks)
    return _loss_and_grads(lambda p: jnp.sum(jnp.square(nnx.merge(graphdef, p)(x, mask))), params)

  (*plain, plain_remats), (*remat, remats) = run(False), run(True)
  _assert_same(plain, remat)
  assert (plain_remats, remats) == (0, dims.layers)


@pytest.mark.parametrize("scan_blocks", [False, True])
def test_student_passes_model_remat_to_its_tuned_whisper_blocks(scan_blocks):
  """The training loss of a student with 1 tuned Whisper block and a 2-block Conformer head."""
  c = demo.get_config("tiny")
  c.features.frontend = "whisper"
  c.features.whisper_weights = HF_FOLDER
  c.features.whisper_layers = 1
  c.model.whisper_tuned_layers = 1
  c.model.subsample = 2
  c.model.depth = 2
  c.model.scan_blocks = scan_blocks
  c.train.channel_augment.update(dict(warp=0.0, eq_db=0.0, lowpass_prob=0.0))
  rows, frames, embed_dim = 2, 20, 16
  rng = np.random.default_rng(0)
  batch = {
    "features": rng.standard_normal((rows, frames, 64)).astype(np.float32),
    "num_frames": np.array([20, 13], np.int32),
    "ctc_labels": rng.integers(1, text_lib.vocab_size("chars"), (rows, 6)).astype(np.int32),
    "num_labels": np.array([6, 4], np.int32),
    "teacher": rng.standard_normal((rows, embed_dim)).astype(np.float32),
    "weight": np.ones(rows, np.float32),
  }

  def run(remat: bool):
    c.model.remat = remat
    config_lib.validate_config(c)
    model = student.build(c, embed_dim)
    assert model.whisper.remat is remat
    graphdef, params = nnx.split(model)
    kwargs = dict(graphdef=graphdef, config=c, target_mean=jnp.zeros(embed_dim), train=False)
    return _loss_and_grads(lambda p: train_steps.loss_fn(p, batch, None, **kwargs)[0], params)

  (*plain, plain_remats), (*remat, remats) = run(False), run(True)
  _assert_same(plain, remat)
  # The tuned Whisper block, and the Conformer's: each block (or the scanned body) once.
  assert (plain_remats, remats) == (0, 1 + (1 if scan_blocks else c.model.depth))
