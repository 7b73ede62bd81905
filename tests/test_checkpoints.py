import numpy as np
import pytest

from stalign import checkpoints


def test_warm_start_keeps_only_skipped_paths_fresh():
  fresh = {"blocks": {"0": {"w": np.zeros(2)}}, "pool_out": {"kernel": np.zeros(3)}}
  restored = {"blocks": {"0": {"w": np.ones(2)}}, "pool_out": {"kernel": np.ones(3)}}
  out = checkpoints.warm_start(fresh, restored, ("pool_",))
  np.testing.assert_array_equal(out["blocks"]["0"]["w"], 1)
  np.testing.assert_array_equal(out["pool_out"]["kernel"], 0)
  np.testing.assert_array_equal(
    checkpoints.warm_start(fresh, restored, ())["pool_out"]["kernel"], 1
  )


def test_warm_start_rejects_a_pattern_that_matches_nothing():
  tree = {"a": np.zeros(1)}
  with pytest.raises(ValueError, match="pool_"):
    checkpoints.warm_start(tree, tree, ("pool_",))
