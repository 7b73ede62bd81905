"""stalign: semantically aligned speech-text embeddings in JAX/Flax.

`stalign.load(run)` restores a trained run for embedding speech and text (stalign/api.py).
"""


def load(path: str, step: int | None = None, config=None):
  """Restores a run; see `stalign.api.load` (imported lazily: `import stalign` stays cheap)."""
  from stalign import api  # pylint: disable=g-import-not-at-top

  return api.load(path, step=step, config=config)
