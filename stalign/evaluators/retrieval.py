"""Cross-modal retrieval: recall@k, median rank and MRR, speech->text and text->speech.

A rank is 1 + the number of wrong items scoring strictly higher than the best
correct one. The best correct score is found first from the correct pairs
alone (the ids say which they are: O(pairs x dim), no matmul). Then one pass
over the gallery counts, for a block of queries at a time, the wrong items
above it: a jitted scan of matmuls over gallery blocks, so memory stays bounded
for galleries of any size, no [N, G] score matrix is ever held, and each query
block is one dispatch.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stalign.evaluators import Embeddings
from stalign.evaluators import register
from stalign.utils import unit

KS = (1, 5, 10)


def _positive_scores(
  queries: np.ndarray, query_ids: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray
) -> np.ndarray:
  """Per query, the best score among the gallery items sharing its id (-inf if none)."""
  order = np.argsort(gallery_ids, kind="stable")
  first = np.searchsorted(gallery_ids[order], query_ids, side="left")
  matches = np.searchsorted(gallery_ids[order], query_ids, side="right") - first
  query_row = np.repeat(np.arange(len(queries)), matches)
  # Each pair's position in the sorted gallery: its query's first match plus its offset.
  offset = np.arange(matches.sum()) - np.repeat(np.cumsum(matches) - matches, matches)
  gallery_row = order[np.repeat(first, matches) + offset]
  scores = np.einsum("nd,nd->n", queries[query_row], gallery[gallery_row])
  best = np.full(len(queries), -np.inf, np.float32)
  np.maximum.at(best, query_row, scores)
  return best


@functools.partial(jax.jit, static_argnames="block")
def _count_above(queries, positive_score, query_ids, gallery, gallery_ids, gallery_valid, block):
  """Per query: real gallery items (not sharing its id) scoring above its positive score."""
  dim = gallery.shape[-1]

  def add_block(count, part):
    items, ids, valid = part
    wrong = (ids[None, :] != query_ids[:, None]) & valid[None, :]
    return count + jnp.sum((queries @ items.T > positive_score[:, None]) & wrong, axis=1), None

  parts = (
    gallery.reshape(-1, block, dim),
    gallery_ids.reshape(-1, block),
    gallery_valid.reshape(-1, block),
  )
  count, _ = jax.lax.scan(add_block, jnp.zeros(len(queries), jnp.int32), parts)
  return count


def ranks(
  queries: np.ndarray,
  query_ids: np.ndarray,
  gallery: np.ndarray,
  gallery_ids: np.ndarray,
  block: int = 1024,
) -> np.ndarray:
  """1-based rank of each query's best-scoring correct gallery item (ids equal = correct)."""
  queries, gallery = unit(queries).astype(np.float32), unit(gallery).astype(np.float32)
  positive = _positive_scores(queries, query_ids, gallery, gallery_ids)
  # The gallery goes to the device once, padded to whole blocks (padding rows are not valid).
  padded = -(-len(gallery) // block) * block
  on_device = [
    jnp.asarray(_pad(x, padded, fill))
    for x, fill in ((gallery, 0), (gallery_ids, 0), (np.ones(len(gallery), bool), False))
  ]
  counts = np.zeros(len(queries), np.int64)
  for q in range(0, len(queries), block):
    qs = slice(q, q + block)
    rows = len(queries[qs])
    counts[qs] = np.asarray(
      _count_above(
        _pad(queries[qs], block),
        _pad(positive[qs], block),
        _pad(query_ids[qs], block),
        *on_device,
        block=block,
      )
    )[:rows]
  return counts + 1


def _pad(x: np.ndarray, rows: int, fill=0) -> np.ndarray:
  """Pads to a fixed row count (a block, or whole blocks): one compiled count serves every call."""
  if len(x) == rows:
    return x
  pad = np.full((rows - len(x),) + x.shape[1:], fill, x.dtype)
  return np.concatenate([x, pad])


def summarize(rank: np.ndarray) -> dict:
  out = {f"recall_at_{k}": float(np.mean(rank <= k)) for k in KS}
  out["median_rank"] = float(np.median(rank))
  out["mrr"] = float(np.mean(1.0 / rank))
  out["queries"] = int(len(rank))
  return out


@register("retrieval")
def evaluate(emb: Embeddings) -> dict:
  speech_ids = emb.text_index
  text_ids = np.arange(len(emb.text))
  s2t = summarize(ranks(emb.speech, speech_ids, emb.text, text_ids))
  s2t["gallery"] = len(emb.text)
  t2s = summarize(ranks(emb.text, text_ids, emb.speech, speech_ids))
  t2s["gallery"] = len(emb.speech)
  speech, text = unit(emb.speech), unit(emb.text)
  paired = np.sum(speech * text[speech_ids], axis=1)
  rng = np.random.default_rng(0)
  others = (speech_ids + rng.integers(1, len(text), len(speech_ids))) % len(text)
  unpaired = np.sum(speech * text[others], axis=1)
  raw = unit(emb.raw_text)
  sim = raw @ raw.T
  np.fill_diagonal(sim, -np.inf)
  return {
    "speech_to_text": s2t,
    "text_to_speech": t2s,
    "paired_cosine": float(paired.mean()),
    "unpaired_cosine": float(unpaired.mean()),
    "gallery_difficulty": float(sim.max(axis=1).mean()),
  }
