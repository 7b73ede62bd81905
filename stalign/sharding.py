"""Device mesh and logical-axis sharding.

Model code names the axes of every parameter and activation logically
(`embed`, `mlp`, `heads`, `batch`, ...); the config's `sharding_rules` table is
the only place that maps them onto the mesh axes (`data`, `fsdp`, `model`).
The same program thus runs on one CPU, eight simulated devices or a pod.
"""

from collections.abc import Callable
from collections.abc import Sequence
import contextlib

from absl import logging
from flax import nnx
import flax.core.spmd as core_spmd
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

MESH_AXES = ("data", "fsdp", "model")


def logical(init: Callable, *names: str | None) -> Callable:
  """Initializer whose parameter carries logical axis names (sharded later, by the rules)."""
  return nnx.with_partitioning(init, names, eager_sharding=False)


def make_mesh(
  mesh_config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None
) -> Mesh:
  """A (data, fsdp, model) mesh over `devices` (default: all); one axis may be -1 (= the rest)."""
  sizes = [mesh_config[a] for a in MESH_AXES]
  count = len(devices) if devices is not None else jax.device_count()
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if sizes.count(-1) > 1 or count % fixed:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {count} devices")
  sizes = [count // fixed if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != count:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {np.prod(sizes)} of {count} devices")
  mesh = jax.make_mesh(
    tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices
  )
  logging.info(
    "mesh %s over %d devices in %d processes", dict(mesh.shape), count, jax.process_count()
  )
  return mesh


def local_mesh() -> Mesh | None:
  """This process's devices as a 1-D `data` mesh, or None when it has only one.

  For inference and the teacher, which split a batch over the local devices
  and replicate the (small) parameters: each process embeds its own inputs,
  so a mesh over other hosts' devices would only make it wait on them. Auto
  axes let XLA propagate the batch split with no per-op annotations.
  """
  devices = jax.local_devices()
  if len(devices) == 1:
    return None
  return Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@contextlib.contextmanager
def rules_context(mesh: Mesh, rules: Sequence):
  """Makes the mesh and the logical-axis rules current (for tracing and for specs)."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(tuple(tuple(r) for r in rules)):
    yield


def state_shardings(abstract_state, mesh: Mesh, rules: Sequence):
  """NamedShardings for a state pytree, from the logical names on its Variables."""
  with nnx.logical_axis_rules(tuple(tuple(r) for r in rules)):
    return nnx.get_named_sharding(abstract_state, mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every data-parallel mesh axis."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside a mesh."""
  rules = core_spmd.get_logical_axis_rules()
  if jax.sharding.get_abstract_mesh().empty or not rules:
    return x
  return jax.lax.with_sharding_constraint(x, P(*core_spmd.from_sharding_rules(names, rules)))


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax arrays sharded over the data axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)
