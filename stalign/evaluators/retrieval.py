"""Cross-modal retrieval: recall@k, median rank and MRR, speech->text and text->speech.

Ranks are counted block by block (a jitted matmul of one query block against
one gallery block, counting gallery items that score above the true match),
so memory stays bounded for galleries of any size and no [N, G] score matrix
is ever held. A rank is 1 + the number of wrong items scoring strictly higher
than the best correct one.
"""

import jax
import jax.numpy as jnp
import numpy as np

from stalign.evaluators import Embeddings
from stalign.evaluators import register
from stalign.utils import unit

KS = (1, 5, 10)


@jax.jit
def _count_block(queries, positive_score, gallery, gallery_ids, query_ids, gallery_valid):
  """Per query: real gallery items (not sharing its id) scoring above its positive score."""
  scores = queries @ gallery.T
  wrong = (gallery_ids[None, :] != query_ids[:, None]) & gallery_valid[None, :]
  return jnp.sum((scores > positive_score[:, None]) & wrong, axis=1)


def ranks(
  queries: np.ndarray,
  query_ids: np.ndarray,
  gallery: np.ndarray,
  gallery_ids: np.ndarray,
  block: int = 1024,
) -> np.ndarray:
  """1-based rank of each query's best-scoring correct gallery item (ids equal = correct)."""
  queries, gallery = unit(queries).astype(np.float32), unit(gallery).astype(np.float32)
  positive = np.full(len(queries), -np.inf, np.float32)
  for g in range(0, len(gallery), block):
    s = queries @ gallery[g : g + block].T
    s[gallery_ids[None, g : g + block] != query_ids[:, None]] = -np.inf
    positive = np.maximum(positive, s.max(axis=1))
  counts = np.zeros(len(queries), np.int64)
  for q in range(0, len(queries), block):
    qs = slice(q, q + block)
    for g in range(0, len(gallery), block):
      gs = slice(g, g + block)
      counts[qs] += np.asarray(
        _count_block(
          _pad(queries[qs], block),
          _pad(positive[qs], block),
          _pad(gallery[gs], block),
          _pad(gallery_ids[gs], block),
          _pad(query_ids[qs], block),
          _pad(np.ones(len(gallery[gs]), bool), block, fill=False),
        )
      )[: len(queries[qs])]
  return counts + 1


def _pad(x: np.ndarray, rows: int, fill=0) -> np.ndarray:
  """Pads to a fixed row count so the jitted block compiles once (rows masked by the caller)."""
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
