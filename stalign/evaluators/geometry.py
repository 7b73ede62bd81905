"""Geometry of the joint space: how close pairs are, how far the modalities sit apart, spread.

  paired_cosine / random_cosine: mean cosine of an utterance with its own
    transcript, and with every other distinct transcript of the split (exact
    mean over all unpaired combinations, no sampling).
  modality_gap: distance between the centroids of the unit-normalised speech
    and paired text embeddings (Liang et al., 2022); 0 when the modalities
    overlap, up to 2.
  alignment: E ||f(x) - g(y)||^2 over unit-normalised positive pairs (Wang &
    Isola, 2020; alpha = 2); lower is better aligned, range [0, 4].
  uniformity_{speech,text}: log E exp(-2 ||u - v||^2) over distinct pairs of
    one modality (t = 2); lower is more uniformly spread, minimum about -4 in
    high dimension.
  self_cosine_{speech,text}: mean cosine between distinct items of one
    modality (anisotropy); 0 for an isotropic spread.

All figures are computed in the space users query (centred targets).
"""

import jax
import jax.numpy as jnp
import numpy as np

from stalign.evaluators import Embeddings
from stalign.evaluators import register
from stalign.utils import unit

MAX_UNIFORMITY_ROWS = 4096  # Pairwise terms are O(N^2) memory: larger sets are subsampled.


@jax.jit
def pair_cosines(speech: jax.Array, text: jax.Array, text_index: jax.Array) -> tuple:
  """(mean paired cosine, mean cosine over all unpaired speech x gallery-text combinations)."""
  s, t = unit(speech), unit(text)
  paired = jnp.sum(s * t[text_index], axis=1)
  total = jnp.sum(s @ jnp.sum(t, axis=0))
  n, g = s.shape[0], t.shape[0]
  return paired.mean(), (total - paired.sum()) / (n * (g - 1))


@jax.jit
def modality_gap(speech: jax.Array, text: jax.Array) -> jax.Array:
  return jnp.linalg.norm(unit(speech).mean(0) - unit(text).mean(0))


@jax.jit
def alignment(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.sum((unit(x) - unit(y)) ** 2, axis=1))


@jax.jit
def uniformity(x: jax.Array, t: float = 2.0) -> jax.Array:
  u = unit(x)
  sq = jnp.maximum(2.0 - 2.0 * u @ u.T, 0.0)
  n = u.shape[0]
  off = ~jnp.eye(n, dtype=bool)
  return jnp.log(jnp.sum(jnp.where(off, jnp.exp(-t * sq), 0.0)) / (n * (n - 1)))


@jax.jit
def self_cosine(x: jax.Array) -> jax.Array:
  u = unit(x)
  n = u.shape[0]
  return (jnp.sum(jnp.sum(u, axis=0) ** 2) - jnp.sum(u * u)) / (n * (n - 1))


def _subsample(x: np.ndarray) -> np.ndarray:
  if len(x) <= MAX_UNIFORMITY_ROWS:
    return x
  return x[np.random.default_rng(0).choice(len(x), MAX_UNIFORMITY_ROWS, replace=False)]


@register("geometry")
def evaluate(emb: Embeddings) -> dict:
  paired, unpaired = pair_cosines(emb.speech, emb.text, emb.text_index)
  speech, text = _subsample(emb.speech), _subsample(emb.text)
  return {
    "paired_cosine": float(paired),
    "random_cosine": float(unpaired),
    "modality_gap": float(modality_gap(emb.speech, emb.paired_text)),
    "alignment": float(alignment(emb.speech, emb.paired_text)),
    "uniformity_speech": float(uniformity(speech)),
    "uniformity_text": float(uniformity(text)),
    "self_cosine_speech": float(self_cosine(speech)),
    "self_cosine_text": float(self_cosine(text)),
  }
