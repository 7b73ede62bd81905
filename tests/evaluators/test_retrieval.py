import numpy as np

from stalign.evaluators import retrieval


def _dense_ranks(q, qid, g, gid):
  """Plain numpy reference: rank of the best correct item among all gallery scores."""
  qn = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
  gn = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)
  s = qn @ gn.T
  correct = gid[None, :] == qid[:, None]
  best = np.where(correct, s, -np.inf).max(1)
  return 1 + np.sum((s > best[:, None]) & ~correct, axis=1)


def test_blockwise_ranks_equal_dense_reference_in_both_directions():
  rng = np.random.default_rng(0)
  g = rng.standard_normal((300, 16))
  ids = rng.integers(0, 300, 1000)
  q = g[ids] + rng.standard_normal((1000, 16)) * 1.5
  np.testing.assert_array_equal(
    retrieval.ranks(q, ids, g, np.arange(300), block=128), _dense_ranks(q, ids, g, np.arange(300))
  )
  np.testing.assert_array_equal(
    retrieval.ranks(g, np.arange(300), q, ids, block=128), _dense_ranks(g, np.arange(300), q, ids)
  )


def test_summary_metrics_by_hand():
  s = retrieval.summarize(np.array([1, 2, 11, 1]))
  assert s["recall_at_1"] == 0.5 and s["recall_at_5"] == 0.75 and s["recall_at_10"] == 0.75
  assert s["median_rank"] == 1.5
  np.testing.assert_allclose(s["mrr"], (1 + 0.5 + 1 / 11 + 1) / 4)
