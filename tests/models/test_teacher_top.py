"""The teacher's last layers as the student's utterance head (`model.teacher_layers`)."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from stalign import train_optimizer
from stalign.models import hf_loader
from stalign.models import student as student_lib


def _config(layers: int):
  c = demo.get_config("tiny")
  c.model.dim = 32
  c.model.teacher_layers = layers
  return c


@pytest.fixture(scope="module")
def teacher_layers():
  transformer_dir, _ = hf_loader.load_pooling(hf_loader.default_teacher_path())
  graphdef, state, _ = hf_loader.load_bert(transformer_dir)
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def model():
  return student_lib.build(_config(2), embed_dim=384)


def test_the_head_starts_as_the_teachers_last_layers_and_tunes_at_the_pretrained_rate(
  model, teacher_layers
):
  top = model.teacher_top
  for mine, theirs in zip(top.layers, teacher_layers.layers[-2:], strict=True):
    for (path, a), (_, b) in zip(
      nnx.to_flat_state(nnx.state(mine, nnx.Param)),
      nnx.to_flat_state(nnx.state(theirs, nnx.Param)),
      strict=True,
    ):
      np.testing.assert_array_equal(a[...], b[...], err_msg=str(path))
  np.testing.assert_array_equal(
    top.position.embedding[...], teacher_layers.embeddings.position.embedding[...]
  )
  # The pretrained rate covers every warm-started parameter, and not the fresh projection.
  params = nnx.state(model, nnx.Param)
  mask = train_optimizer.is_pretrained(params)
  flat = {
    tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path): bool(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(mask)
  }
  top_paths = [p for p in flat if p[0] == "teacher_top"]
  assert top_paths and all(flat[p] is (p[1] != "project") for p in top_paths)
  assert not any(flat[p] for p in flat if p[0] != "teacher_top")


def test_padding_never_changes_the_embedding(model):
  embed = nnx.jit(lambda m, features, frames: m(features, frames)["embedding"])
  frames = model.subsample * 5
  features = jax.random.normal(jax.random.key(0), (1, frames, 80))
  alone = embed(model, features, jnp.array([frames]))
  padded = jnp.pad(features, ((0, 0), (0, 3 * model.subsample), (0, 0)), constant_values=7.0)
  together = embed(model, padded, jnp.array([frames]))
  assert alone.shape == (1, 384)
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_more_layers_than_the_teacher_has_are_refused_by_name():
  with pytest.raises(ValueError, match=r"model.teacher_layers=7: the teacher has 6 layers"):
    student_lib.build(_config(7), embed_dim=384)
