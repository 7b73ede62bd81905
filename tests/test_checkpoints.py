import os

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


def test_the_best_valid_loss_step_outlives_the_latest_n(tmp_path):
  """With keep=1 the latest step and the lowest `valid_loss` step both stay on disk."""
  mgr = checkpoints.manager(str(tmp_path), keep=1, async_save=False)
  for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 4.0)):
    state = {"w": np.full(2, float(step))}
    checkpoints.save(mgr, step, state, {"epoch": 0, "batch": step}, {"valid_loss": loss})
  mgr.wait_until_finished()
  assert mgr.all_steps() == [2, 4]
  abstract = {"w": np.zeros(2)}
  state, position = checkpoints.restore(mgr, 2, abstract)
  np.testing.assert_array_equal(state["w"], 2.0)
  assert position == {"epoch": 0, "batch": 2}
  mgr.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
