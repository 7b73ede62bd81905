"""The dense and LayerNorm layers the speech models share, with their logical axis names.

One definition for the Conformer student and the Whisper encoder, so both name
their parameters' axes the same way for the mesh rules (`stalign.sharding`).
"""

from flax import nnx

from stalign.sharding import logical

_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def dense(din: int, dout: int, names: tuple, rngs: nnx.Rngs) -> nnx.Linear:
  """A linear layer whose kernel's axes are `names` (its bias takes the last one)."""
  return nnx.Linear(
    din, dout, kernel_init=logical(_init, *names), bias_init=logical(_zeros, names[-1]), rngs=rngs
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
