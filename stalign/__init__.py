"""stalign: semantically aligned speech-text embeddings in JAX/Flax.

`stalign.load(path)` restores a trained run, or an export of one (`python -m stalign.export`),
for embedding speech and text (stalign/api.py).
"""

# The one place the version is written: setup.py reads it from this file, exports record it.
__version__ = "0.1.0"


def load(path: str, step: int | None = None, config=None):
  """Restores a run or an export: `stalign.api.load`, imported lazily to keep `import` cheap."""
  from stalign import api  # pylint: disable=g-import-not-at-top

  return api.load(path, step=step, config=config)
