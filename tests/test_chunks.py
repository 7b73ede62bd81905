"""The resumable chunk cache: a rerun computes only the chunks not saved, never a stale one."""

import os

import numpy as np

from stalign import chunks


def _lengths(chunk):
  return {"lengths": np.array([len(text) for text in chunk])}


def test_a_rerun_computes_only_the_chunks_not_saved(tmp_path):
  texts = ["a", "bb", "ccc", "dddd", "eeeee"]
  cache = chunks.Cache(str(tmp_path), texts, 2)
  assert [list(c) for c in cache.chunks] == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
  computed = []

  def compute(chunk):
    computed.append(list(chunk))
    return _lengths(chunk)

  cache.fill(compute, indices=[0, 2])  # Another host computes chunk 1.
  assert computed == [["a", "bb"], ["eeeee"]]
  cache.fill(compute)
  assert computed[2:] == [["ccc", "dddd"]]  # Only the chunk not saved yet.
  np.testing.assert_array_equal(
    np.concatenate([cache.read(i)["lengths"] for i in range(len(cache))]), [1, 2, 3, 4, 5]
  )
  assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(cache.path(i)) for i in range(3))


def test_a_chunk_whose_inputs_changed_is_computed_again(tmp_path):
  before = chunks.Cache(str(tmp_path), ["a", "bb", "ccc"], 2)
  before.fill(_lengths)
  after = chunks.Cache(str(tmp_path), ["a", "bb", "cccc"], 2)
  assert after.path(0) == before.path(0) and after.path(1) != before.path(1)
  computed = []
  after.fill(lambda chunk: computed.append(list(chunk)) or _lengths(chunk))
  assert computed == [["cccc"]]
  assert after.read(1)["lengths"].tolist() == [4]
