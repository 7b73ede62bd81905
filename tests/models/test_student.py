from flax import nnx
import numpy as np

from configs import demo
from stalign.data import text
from stalign.models.student import Student


def _model():
  c = demo.get_config("tiny")
  model = Student(c.model, 80, 384, text.VOCAB_SIZE, 0.07, nnx.Rngs(0))
  model.eval()
  return c, model


def test_shapes():
  c, model = _model()
  out = model(np.zeros((3, 64, 80), np.float32), np.array([64, 40, 9]))
  assert out["embedding"].shape == (3, 384)
  up = c.model.ctc_upsample
  assert out["ctc_logits"].shape == (3, 64 // c.model.subsample * up, text.VOCAB_SIZE)
  np.testing.assert_array_equal(out["ctc_mask"].sum(1), np.array([8, 5, 2]) * up)
  np.testing.assert_array_equal(model.frame_mask(np.array([64, 40, 9]), 64).sum(1), [8, 5, 2])


def test_padding_does_not_change_the_embedding_or_real_frame_logits():
  _, model = _model()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 43, 80)).astype(np.float32)
  short = model(np.pad(x, ((0, 0), (0, 5), (0, 0))), np.array([43]))
  # Same utterance with much more (non-zero!) padding: padded frames must be ignored.
  junk = rng.standard_normal((1, 48 + 64, 80)).astype(np.float32)
  junk[:, :43] = x[0]
  long = model(junk, np.array([43]))
  np.testing.assert_allclose(short["embedding"], long["embedding"], atol=1e-5)
  np.testing.assert_allclose(short["ctc_logits"][:, :24], long["ctc_logits"][:, :24], atol=1e-4)


def test_every_parameter_has_logical_axis_names():
  _, model = _model()
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if var.value.ndim and "input_norm" not in path:
      assert var.get_metadata().get("out_sharding"), f"{path} has no logical axis names"


def test_depthwise_conv_equals_grouped_convolution():
  import jax

  from stalign.models.student import DepthwiseConv

  for kernel in (4, 5):
    m = DepthwiseConv(8, kernel, nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 11, 8)).astype(np.float32)
    ref = (
      jax.lax.conv_general_dilated(
        x,
        m.kernel[...][:, None, :],
        (1,),
        [((kernel - 1) // 2, kernel // 2)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=8,
      )
      + m.bias[...]
    )
    np.testing.assert_allclose(m(x), ref, atol=1e-5)


def test_layers_are_mean_pooled_block_outputs_that_the_head_reads():
  c, model = _model()
  feats = np.random.default_rng(0).standard_normal((3, 96, 80)).astype(np.float32)
  out = model(feats, np.array([96, 50, 9]))
  assert out["layers"].shape == (c.model.depth + 1, 3, c.model.dim)
  # With mean pooling the utterance head reads exactly the last pooled layer.
  np.testing.assert_allclose(
    model.pool_out(nnx.gelu(model.pool_hidden(out["layers"][-1]))), out["embedding"], atol=1e-5
  )


def test_attention_pooling_weights_are_not_uniform_and_ignore_padding():
  """Attention pooling must weigh frames by content, never give weight to padding."""
  c = demo.get_config("tiny")
  c.model.pooling = "attention"
  model = Student(c.model, 80, 384, text.VOCAB_SIZE, 0.07, nnx.Rngs(0))
  model.eval()
  forward = nnx.capture(model, nnx.Intermediate)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 43, 80)).astype(np.float32)
  junk = rng.standard_normal((1, 112, 80)).astype(np.float32)
  junk[:, :43] = x[0]
  _, short = forward(np.pad(x, ((0, 0), (0, 5), (0, 0))), np.array([43]))
  _, long = forward(junk, np.array([43]))
  short, long = short["pool_weights"][0][0], long["pool_weights"][0][0]
  real = -(-43 // c.model.subsample)  # Encoder frames holding audio.
  assert short.shape == (real,) and long.shape == (112 // c.model.subsample,)
  np.testing.assert_allclose(short.sum(), 1.0, rtol=1e-5)
  assert short.max() - short.min() > 0.05, short  # Mean pooling would give 1/real each.
  np.testing.assert_allclose(long[:real], short, atol=1e-5)
  np.testing.assert_array_equal(long[real:], 0.0)


def test_ctc_layer_reads_its_block_and_ignores_later_ones():
  """`model.ctc_layer=0` puts CTC on the first block: later blocks cannot change its logits."""
  c = demo.get_config("tiny")
  c.model.depth = 2
  feats = np.random.default_rng(0).standard_normal((2, 64, 80)).astype(np.float32)
  lengths = np.array([64, 30])
  for ctc_layer, ctc_moves in ((0, False), (-1, True)):
    c.model.ctc_layer = ctc_layer
    model = Student(c.model, 80, 384, text.VOCAB_SIZE, 0.07, nnx.Rngs(0))
    model.eval()
    before = model(feats, lengths)
    last = model.blocks[-1].ff2.down
    last.kernel[...] = last.kernel[...] + 1.0
    after = model(feats, lengths)
    assert not np.allclose(before["embedding"], after["embedding"])
    moved = not np.allclose(before["ctc_logits"], after["ctc_logits"], atol=1e-6)
    assert moved == ctc_moves, ctc_layer


def test_scanned_and_rematerialised_blocks_compute_what_unrolled_blocks_do():
  """`model.scan_blocks` and `model.remat` change how the blocks run, not what they compute: same
  params, same outputs and gradients (eval mode; in training, scan draws one dropout key per
  block, so its masks differ)."""
  from flax import nnx
  import jax
  import jax.numpy as jnp

  from stalign.models import student

  c = demo.get_config("tiny")
  c.model.depth = 3
  x = np.random.default_rng(0).standard_normal((2, 64, 80)).astype(np.float32)
  n = np.array([64, 40])
  results = {}
  for scan, remat in ((False, False), (True, False), (False, True), (True, True)):
    c.model.scan_blocks, c.model.remat = scan, remat
    graphdef, state = nnx.split(student.build(c, 384, seed=0))

    def loss(state, graphdef=graphdef):
      model = nnx.merge(graphdef, state)
      model.eval()
      out = model(x, n)
      return jnp.sum(out["embedding"] ** 2) + jnp.sum(out["ctc_logits"] ** 2), out["layers"]

    (value, layers), grads = jax.value_and_grad(loss, has_aux=True)(state)
    results[scan, remat] = (value, layers, jax.tree.leaves(grads))
  base = results[False, False]
  for key, (value, layers, grads) in results.items():
    np.testing.assert_allclose(value, base[0], rtol=1e-5, err_msg=str(key))
    np.testing.assert_allclose(layers, base[1], atol=1e-5, err_msg=str(key))
    for a, b in zip(grads, base[2]):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=str(key))
