"""Exact retrieval: the evaluator's jitted blockwise ranking vs faiss-cpu `IndexFlatIP`.

Both are brute-force exact inner-product search on unit vectors, on the same
synthetic data and threads: `stalign.evaluators.retrieval.ranks` (what every
retrieval figure of the report comes from) and faiss's `IndexFlatIP.search`
for the top `k`. They do not compute the same thing: `ranks` gives every
query's exact rank of its correct item (median rank and MRR need it: the
correct item's score from its pair alone, then one jitted counting pass over
the gallery), faiss the `k` best items. The check is what both can
answer: for every query, the correct item is in faiss's top `k` exactly when its
rank is <= `k`, at the same position. Where they differ, the float64 scores
tell whether two items were within float32 rounding of each other (a tie that
either order is right for) or not (a real disagreement, `disagreements`).

Data: `gallery` random unit vectors in `dim` dimensions and one query per
gallery item, its item plus noise of a random size, so ranks spread from 1 to
deep in the gallery. Needs the `bench` extra (faiss-cpu); without it only our
side runs and the check is skipped with the reason.
"""

from typing import Any

import numpy as np

from bench import _common
from stalign.evaluators import retrieval
from stalign.utils import unit

TIE = 1e-5  # Scores closer than this are within float32 rounding of a 384-term dot product.


def synthetic(items: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(queries, gallery), unit float32; query i belongs to gallery item i."""
  rng = np.random.default_rng(seed)
  gallery = unit(rng.standard_normal((items, dim)).astype(np.float32))
  noise = unit(rng.standard_normal((items, dim)).astype(np.float32))
  # Cosine to the own item from ~0.1 (lost among the rest) to ~1 (rank 1).
  weight = rng.uniform(0.0, 2.5, (items, 1)).astype(np.float32) ** 2
  return unit(gallery + noise * weight), gallery


def _faiss():
  try:
    import faiss
  except ImportError:
    return None
  return faiss


def check(
  ranks: np.ndarray, top: np.ndarray, queries: np.ndarray, gallery: np.ndarray
) -> dict[str, int]:
  """Queries whose rank (<= k) and faiss top-k position differ, and how many are not ties."""
  k = top.shape[1]
  ids = np.arange(len(ranks))
  found = top == ids[:, None]
  theirs = np.where(found.any(1), found.argmax(1) + 1, k + 1)
  ours = np.minimum(ranks, k + 1)
  differ = np.flatnonzero(ours != theirs)
  real = 0
  for i in differ:
    scores = gallery.astype(np.float64) @ queries[i].astype(np.float64)
    gaps = np.abs(np.delete(scores, i) - scores[i])
    real += int(gaps.min() > TIE)
  return {"differing_queries": int(len(differ)), "disagreements": real}


def run(items: int = 30_000, dim: int = 384, k: int = 10, repeats: int = 1) -> dict[str, Any]:
  """Seconds of both sides on `items` queries x `items` gallery x `dim`, and the check."""
  queries, gallery = synthetic(items, dim)
  ids = np.arange(items)
  retrieval.ranks(queries[:1], ids[:1], gallery, ids)  # Compiles the count for this gallery.
  out: dict[str, Any] = {"queries": items, "gallery": items, "dim": dim, "k": k}
  result = {}

  def ours() -> None:
    result["ranks"] = retrieval.ranks(queries, ids, gallery, ids)

  fns = {"ours": ours}
  faiss = _faiss()
  if faiss is not None:
    index = faiss.IndexFlatIP(dim)
    index.add(gallery)
    fns["faiss"] = lambda: result.update(top=index.search(queries, k)[1])
    out["faiss"] = f"faiss-cpu {faiss.__version__}, {faiss.omp_get_max_threads()} threads"
  else:
    out["faiss"] = "skipped: faiss is not installed; `pip install -e '.[bench]'` (make bench does)"
  seconds = _common.alternate(fns, repeats)
  out["ours_seconds"] = seconds["ours"]
  out["ours_recall_at_k"] = {str(j): float(np.mean(result["ranks"] <= j)) for j in (1, 5, k)}
  out["flops_per_pass"] = 2.0 * items * items * dim
  if faiss is None:
    out["ratios"] = []
    return out
  ours_s, faiss_s = _common.median(seconds["ours"]), _common.median(seconds["faiss"])
  out.update(
    {
      "faiss_seconds": seconds["faiss"],
      "check": check(result["ranks"], result["top"], queries, gallery),
      "ours_over_faiss_speed": faiss_s / ours_s,
    }
  )
  out["identical_top_k"] = out["check"]["disagreements"] == 0
  out["ratios"] = [
    _common.ratio(
      f"{items // 1000}k x {items // 1000}k x {dim}: ours / faiss IndexFlatIP speed",
      out["ours_over_faiss_speed"],
      ("ours queries/s", items / ours_s),
      ("faiss queries/s", items / faiss_s),
      f"both matmul-bound; ours counts every query's exact rank, faiss keeps its top {k} "
      f"(a heap per query); identical top-{k}: {out['identical_top_k']}",
    )
  ]
  return out
