"""The dense and LayerNorm layers every model here builds, with their logical axis names.

One definition for the Conformer student, the Whisper encoder and the BERT
teacher, so all of them name their parameters' axes the same way for the mesh
rules (`stalign.sharding`). The initialisers only matter to a model trained
from scratch; pretrained ones (Whisper, BERT) are overwritten by their weights.
"""

from flax import nnx

from stalign.sharding import logical

_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def dense(
  din: int, dout: int, names: tuple, rngs: nnx.Rngs, init: nnx.Initializer = _init
) -> nnx.Linear:
  """A linear layer whose kernel's axes are `names` (its bias takes the last one)."""
  return nnx.Linear(
    din, dout, kernel_init=logical(init, *names), bias_init=logical(_zeros, names[-1]), rngs=rngs
  )


def norm(dim: int, rngs: nnx.Rngs, epsilon: float = 1e-6) -> nnx.LayerNorm:
  """A LayerNorm over the `embed` axis (Flax's epsilon unless a checkpoint needs its own)."""
  return nnx.LayerNorm(
    dim,
    epsilon=epsilon,
    scale_init=logical(_ones, "embed"),
    bias_init=logical(_zeros, "embed"),
    rngs=rngs,
  )
