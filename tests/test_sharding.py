"""Every mesh axis: the rules lay parameters and optimizer state out as they say, and a run on a
(data, fsdp, model) mesh of 8 simulated devices trains as one device does.

The live layout is read inside `train.train_and_evaluate` itself: the driver
wraps `checkpoints.save`, which receives the state the loop holds (as the
jitted step's `out_shardings` placed it), and records each array's
`sharding.spec` and the shape of the shard one device holds.
"""

import collections
import functools
import json
import os
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest

from stalign import sharding
from stalign import train_optimizer
from stalign import train_steps

from testdata import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = {"data2_fsdp2_model2": (2, 2, 2), "fsdp8": (1, 8, 1)}


def _expected_spec(names, rules, ndim: int) -> list:
  """What the rules table says for an array with these logical axis names (none: replicated)."""
  table = {name: list(axes) if isinstance(axes, tuple) else axes for name, axes in rules}
  return [table[n] if n is not None else None for n in names] if names else [None] * ndim


def _kind(key: str) -> str:
  """Which part of the train state a path of it is in."""
  if key.startswith("['params']"):
    return "params"
  return next((m for m in ("mu", "nu") if f".{m}[" in key), "other")


def _as_list(spec, ndim: int) -> list:
  """A PartitionSpec as JSON-able entries, padded with None (replicated) to `ndim`."""
  entries = [list(e) if isinstance(e, tuple) else e for e in spec]
  return entries + [None] * (ndim - len(entries))


def test_rules_give_params_and_adam_moments_the_same_split():
  """Without devices (an abstract mesh): every Adam moment is laid out as its parameter."""
  c = tiny_config("/unused")
  tx = train_optimizer.make_optimizer(c, train_optimizer.make_schedule(c))
  abstract = jax.eval_shape(functools.partial(train_steps.init_state, c, tx, 384))
  mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES)
  shardings = sharding.state_shardings(abstract, mesh, c.sharding_rules)
  params = {
    jax.tree_util.keystr(p): (v.get_metadata().get("out_sharding"), v.value.ndim)
    for p, v in jax.tree_util.tree_leaves_with_path(
      abstract["params"], is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
  }
  checked = collections.Counter()
  for path, s in jax.tree_util.tree_leaves_with_path(shardings):
    key = jax.tree_util.keystr(path).removesuffix(".value")
    kind = _kind(key)
    if kind == "other":  # Step and optimizer counters: scalars.
      assert s.spec == jax.sharding.PartitionSpec(), key
      continue
    param = key.removeprefix("['params']") if kind == "params" else key.split(f".{kind}", 1)[1]
    names, ndim = params[param]
    spec = _as_list(s.spec, ndim)
    assert spec == _expected_spec(names, c.sharding_rules, ndim), (key, spec)
    checked[kind] += 1
  assert checked == {"params": len(params), "mu": len(params), "nu": len(params)}, checked
  # Not all replicated: the tiny model has parameters on both `fsdp` and `model`.
  flat = [a for names, _ in params.values() for a in (names or ())]
  assert {"embed", "mlp", "heads"} <= set(flat)


DRIVER = """
import json, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import jax
from flax import nnx
from stalign import checkpoints, train
import testdata

c = testdata.tiny_config({data!r})
c.data.manifests = {manifests!r}
c.mesh.data, c.mesh.fsdp, c.mesh.model = {mesh}
c.train.steps, c.train.log_every, c.train.checkpoint_every = 6, 1, 3
layout = {{}}
real_save = checkpoints.save


def save(mgr, step, state, *args, **kwargs):
  leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for path, leaf in leaves:
    variable = isinstance(leaf, nnx.Variable)
    array = leaf[...] if variable else leaf
    spec = [list(e) if isinstance(e, tuple) else e for e in array.sharding.spec]
    layout[jax.tree_util.keystr(path)] = dict(
      shape=list(array.shape),
      shard_shape=list(array.sharding.shard_shape(array.shape)),
      spec=spec + [None] * (array.ndim - len(spec)),
      names=list(leaf.get_metadata().get("out_sharding") or []) if variable else [],
    )
  return real_save(mgr, step, state, *args, **kwargs)


checkpoints.save = save
train.train_and_evaluate(c, {workdir!r})
with open({layout_file!r}, "w") as f:
  json.dump(dict(devices=jax.device_count(), mesh=dict(c.mesh), layout=layout), f)
"""


@pytest.fixture(scope="module")
def runs(prepared_config, tmp_path_factory):
  """The same 6 steps on 1 device and on each 8-device mesh: (history, layout) per run."""
  root = tmp_path_factory.mktemp("meshes")
  out = {}
  for name, (mesh, devices) in {
    "one_device": ((1, 1, 1), 1),
    **{k: (m, 8) for k, m in MESHES.items()},
  }.items():
    workdir, layout_file = root / name, root / f"{name}.json"
    driver = DRIVER.format(
      repo=REPO,
      tests=os.path.join(REPO, "tests"),
      data=prepared_config.data_dir,
      manifests=dict(prepared_config.data.manifests),
      mesh=mesh,
      workdir=str(workdir),
      layout_file=str(layout_file),
    )
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run(
      [sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "train_history.json") as f:
      history = json.load(f)
    with open(layout_file) as f:
      out[name] = (history, json.load(f))
  return out


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_mesh_run_matches_one_device(runs, mesh_name):
  one, _ = runs["one_device"]
  history, layout = runs[mesh_name]
  assert layout["devices"] == 8
  for key in ("loss", "loss_distill", "loss_contrastive", "loss_ctc", "grad_norm"):
    a = np.array([h[key] for h in one["train"]])
    b = np.array([h[key] for h in history["train"]])
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-5, err_msg=key)
    print(f"{mesh_name} {key}: max |difference| to one device {np.abs(b - a).max():.3g}")
  for key in ("valid_loss", "valid_cer"):
    np.testing.assert_allclose(
      [v[key] for v in history["valid"]], [v[key] for v in one["valid"]], rtol=2e-4, atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_params_and_optimizer_state_are_split_as_the_rules_say(runs, mesh_name):
  """Each array's spec is the rules' mapping of its logical names, and each device holds only
  its slice along every mesh axis of size > 1: nothing that should be split is replicated."""
  _, layout = runs[mesh_name]
  sizes = dict(zip(sharding.MESH_AXES, MESHES[mesh_name]))
  rules = tiny_config("/unused").sharding_rules
  split, should_split = collections.Counter(), collections.Counter()
  for key, leaf in layout["layout"].items():
    assert leaf["spec"] == _expected_spec(leaf["names"], rules, len(leaf["shape"])), (key, leaf)
    factors = [
      int(np.prod([sizes[a] for a in ([axis] if isinstance(axis, str) else axis or [])]))
      for axis in leaf["spec"]
    ]
    assert [s * f for s, f in zip(leaf["shard_shape"], factors)] == leaf["shape"], (key, leaf)
    should_split[_kind(key)] += any(f > 1 for f in factors)
    split[_kind(key)] += leaf["shard_shape"] != leaf["shape"]
  params = [k for k in layout["layout"] if k.startswith("['params']")]
  # Replicated by the rules: the input LayerNorm over stacked mel frames, the temperature, biases
  # over `vocab`, and on the fsdp8 mesh whatever maps only to `model` (size 1 there).
  assert split == should_split and split["params"] == split["mu"] == split["nu"] > len(params) / 2
  bytes_per_device = sum(np.prod(layout["layout"][k]["shard_shape"]) for k in params)
  total = sum(np.prod(layout["layout"][k]["shape"]) for k in params)
  assert bytes_per_device < 0.6 * total, (bytes_per_device, total)
