"""The compiled programs of training, as pure functions of plain state pytrees.

`loss_fn`, `train_step` and `eval_step` take the student's parameters (the
model is rebuilt inside with `nnx.merge`) and are bound to their fixed
arguments with `functools.partial` before `jax.jit`, so each can be tested
alone. `init_state`, `sharded_state_shapes` and `jit_train_step` give the train
state and its sharded update as a run builds them; the training loop
(`stalign.train`) and the benchmarks (`bench._common.TrainStep`) both build
their step here, so what is measured is what a run executes. The loss itself is
composed in `losses.compute_losses`.
"""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stalign import losses
from stalign import sharding
from stalign import utils
from stalign.data import features as features_lib
from stalign.models import student as student_lib


def loss_fn(
  params: nnx.State,
  batch: dict,
  rng: jax.Array | None,
  *,
  graphdef: nnx.GraphDef,
  config: ml_collections.ConfigDict,
  target_mean: jax.Array,
  train: bool,
  text_bank: jax.Array | None = None,
) -> tuple[jax.Array, tuple[dict, dict]]:
  """(total loss, (loss parts, model outputs)) of `params` on one batch.

  Computes in `train.compute_dtype` (bf16 compute keeps f32 master weights);
  losses are taken in float32. In training, channel augmentation, SpecAugment and dropout draw from
  `rng`; in evaluation neither runs and `rng` may be None.
  """
  compute_dtype = jnp.dtype(config.train.compute_dtype)
  model = nnx.merge(graphdef, jax.tree.map(lambda p: p.astype(compute_dtype), params))
  features = batch["features"].astype(compute_dtype)
  if train:
    channel = config.train.channel_augment
    if channel.warp or channel.eq_db or channel.lowpass_prob:
      features = features_lib.channel_augment(
        features, jax.random.fold_in(rng, 2), config.features, **channel
      )
    spec = config.train.spec_augment
    if spec.freq_masks or spec.time_masks:
      features = features_lib.spec_augment(
        features, batch["num_frames"], jax.random.fold_in(rng, 1), **spec
      )
    outputs = model(features, batch["num_frames"], nnx.Rngs(dropout=rng))
  else:
    model.eval()
    outputs = model(features, batch["num_frames"])
  outputs = jax.tree.map(
    lambda x: x.astype(jnp.float32) if x.dtype == compute_dtype else x, outputs
  )
  total, parts = losses.compute_losses(
    outputs,
    batch,
    target_mean,
    config.loss,
    model.log_temperature[...].astype(jnp.float32),
    text_bank,
  )
  return total, (parts, outputs)


def train_step(
  state: dict,
  batch: dict,
  *,
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  target_mean: jax.Array,
  text_bank: jax.Array | None = None,
) -> tuple[dict, dict]:
  """One optimizer update: state in, (state, metrics) out. The step number keys the RNG."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (parts, outputs)), grads = grad_fn(
    state["params"],
    batch,
    rng,
    graphdef=graphdef,
    config=config,
    target_mean=target_mean,
    train=True,
    text_bank=text_bank,
  )
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  target = losses.targets(batch, target_mean, config.loss)
  cosine = jnp.sum(utils.unit(outputs["embedding"]) * utils.unit(target), -1)
  metrics = {
    "loss": loss,
    **{f"loss_{k}": v for k, v in parts.items()},
    "grad_norm": optax.global_norm(grads),
    "param_norm": optax.global_norm(params),
    "cosine_to_target": jnp.sum(cosine * batch["weight"]) / batch["weight"].sum(),
    "temperature": jnp.exp(params["log_temperature"][...]),
    "nonfinite_total": opt_state.total_notfinite,
    "nonfinite_consecutive": opt_state.notfinite_count,
  }
  return {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def eval_step(
  params: nnx.State,
  batch: dict,
  *,
  graphdef: nnx.GraphDef,
  config: ml_collections.ConfigDict,
  target_mean: jax.Array,
) -> dict:
  """Loss (summed over the batch's real rows, to average over a split), greedy CTC ids, and
  the embeddings and pooled layers the evaluators read: the one forward pass of evaluation in
  training (`train_validation.run_validation`, `train_validation.run_evaluators`)."""
  loss, (_, outputs) = loss_fn(
    params, batch, None, graphdef=graphdef, config=config, target_mean=target_mean, train=False
  )
  rows = batch["weight"].sum()
  return {
    "loss_sum": loss * rows,
    "rows": rows,
    "ctc_ids": losses.greedy_ctc_ids(outputs["ctc_logits"], outputs["ctc_mask"]),
    "embedding": outputs["embedding"],
    "layers": outputs["layers"],
  }


def init_state(
  config: ml_collections.ConfigDict, tx: optax.GradientTransformation, teacher_dim: int
) -> dict:
  """Fresh train state: params of seed `config.seed`, optimizer state, step 0, the step's RNG.

  The RNG key (dropout, augmentation) travels in the state rather than being
  built from `config.seed` inside the step, so runs that differ only in their
  seed compile to the same program and share the persistent compilation cache.
  """
  params = nnx.state(student_lib.build(config, teacher_dim, config.seed))
  return {
    "params": params,
    "opt_state": tx.init(params),
    "step": jnp.zeros((), jnp.int32),
    "rng": jax.random.key_data(jax.random.key(config.seed)),
  }


def sharded_state_shapes(
  config: ml_collections.ConfigDict,
  tx: optax.GradientTransformation,
  teacher_dim: int,
  mesh: jax.sharding.Mesh,
) -> tuple[dict, dict]:
  """(`init_state`'s shapes, each with its sharding; the shardings alone), allocating nothing.

  Shapes come from `jax.eval_shape`, shardings from the parameters' logical names under
  `config.sharding_rules`: the restore, the initialisation and `jit_train_step` all take the
  state's layout from here.
  """
  shapes = jax.eval_shape(functools.partial(init_state, config, tx, teacher_dim))
  shardings = sharding.state_shardings(shapes, mesh, config.sharding_rules)
  sharded = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings
  )
  return sharded, shardings


def jit_train_step(
  config: ml_collections.ConfigDict,
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  target_mean: jax.Array,
  state_sharding: dict,
  data_sharding: jax.sharding.NamedSharding,
  text_bank: jax.Array | None = None,
) -> jax.stages.Wrapped:
  """`train_step` bound to its fixed arguments and jitted as training runs it.

  State and batch go in with their shardings and the state comes out with the same; the
  state is donated, so the update reuses its buffers and a step holds one copy of the
  parameters and optimizer state. The training loop and the benchmarks
  (`bench._common.TrainStep`) both build their step here, so what is measured is what a
  run executes. Call (and lower) it inside `sharding.rules_context`.
  """
  return jax.jit(
    functools.partial(
      train_step,
      graphdef=graphdef,
      tx=tx,
      config=config,
      target_mean=target_mean,
      text_bank=text_bank,
    ),
    in_shardings=(state_sharding, data_sharding),
    out_shardings=(state_sharding, None),
    donate_argnums=0,
  )


def device_batch(local: dict) -> dict:
  """The numeric arrays a step reads; `weight` is 0 for padding rows of eval batches."""
  keys = ("features", "num_frames", "ctc_labels", "num_labels", "teacher")
  out = {k: local[k] for k in keys}
  out["weight"] = local.get("valid", np.ones(local["num_frames"].shape, bool)).astype(np.float32)
  return out
