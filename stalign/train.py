"""The train loop: one function, read top to bottom.

Phases: logging, mesh, input, model and sharding, optimizer, update step,
checkpoint restore, loop (metrics, validation, checkpoints, preemption), final
save. The jitted update step is a pure function of plain state pytrees; models
are Flax NNX modules rebuilt inside it with `nnx.merge`.
"""
import json
import os
import signal
import time

from absl import logging
from clu import metric_writers
from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax
import tqdm

from stalign import checkpoints
from stalign import input_pipeline
from stalign import losses
from stalign import sharding
from stalign.data import features as features_lib
from stalign.data import text as text_lib
from stalign.models.student import Student


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps with NaN/Inf loss or gradients."""


def build_student(config: ml_collections.ConfigDict, embed_dim: int, seed: int = 0) -> Student:
  return Student(config.model, config.features.num_mels, embed_dim,
                 text_lib.vocab_size(config.features.ctc_targets), config.loss.temperature,
                 nnx.Rngs(seed))


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup, then cosine or linear decay to 2% of the peak."""
  t = config.train
  decay_steps = max(t.steps - t.warmup_steps, 1)
  if t.schedule == "cosine":
    tail = optax.cosine_decay_schedule(t.lr, decay_steps, alpha=0.02)
  elif t.schedule == "linear":
    tail = optax.linear_schedule(t.lr, 0.02 * t.lr, decay_steps)
  else:
    raise ValueError(f"train.schedule={t.schedule!r}; use 'cosine' or 'linear'")
  return optax.join_schedules([optax.linear_schedule(0.0, t.lr, t.warmup_steps), tail],
                              [t.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  t = config.train
  tx = optax.chain(optax.clip_by_global_norm(t.grad_clip),
                   optax.adamw(make_schedule(config), weight_decay=t.weight_decay))
  if t.grad_accumulation > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=t.grad_accumulation)
  # Skips (and counts) updates whose gradients are not finite; the loop stops
  # the run before optax would give up and apply them.
  return optax.apply_if_finite(tx, max_consecutive_errors=t.max_nonfinite_steps + 1)


def targets(batch: dict, target_mean: jax.Array, loss_config: ml_collections.ConfigDict) -> jax.Array:
  """What the student's embedding is pulled towards: the teacher's, centred or raw."""
  return batch["teacher"] - target_mean if loss_config.centre_targets else batch["teacher"]


def compute_losses(outputs: dict, batch: dict, target_mean: jax.Array,
                   loss_config: ml_collections.ConfigDict, log_temperature: jax.Array) -> tuple:
  """Weighted sum of the loss parts, and each part for logging."""
  weights = batch["weight"]
  target = targets(batch, target_mean, loss_config)
  parts = {}
  if loss_config.distill == "cosine":
    parts["distill"] = losses.cosine_distillation(outputs["embedding"], target, weights)
  elif loss_config.distill == "mse":
    parts["distill"] = losses.mse_distillation(outputs["embedding"], target, weights)
  if loss_config.contrastive_weight:
    parts["contrastive"] = losses.info_nce(outputs["embedding"], target, log_temperature, weights)
  if loss_config.ctc_weight:
    parts["ctc"] = losses.ctc(outputs["ctc_logits"], outputs["ctc_mask"], batch["ctc_labels"],
                              batch["num_labels"], weights)
  scale = {"distill": loss_config.distill_weight, "contrastive": loss_config.contrastive_weight,
           "ctc": loss_config.ctc_weight}
  total = sum(scale[k] * v for k, v in parts.items())
  return total, parts


def teacher_stats(config: ml_collections.ConfigDict) -> tuple[int, np.ndarray]:
  """(teacher width, mean teacher embedding of the training transcripts), from precompute."""
  stats = np.load(os.path.join(config.data_dir, "tfrecords", "teacher_stats.npz"))
  return int(stats["dim"]), stats["mean"]


def _with_weights(batch: dict) -> dict:
  """Numeric arrays the step needs; `weight` is 0 for padding rows of eval batches."""
  keys = ("features", "num_frames", "ctc_labels", "num_labels", "teacher")
  out = {k: batch[k] for k in keys}
  out["weight"] = batch.get("valid", np.ones(batch["num_frames"].shape, bool)).astype(np.float32)
  return out


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def _advance(position: dict | None, epoch: int) -> dict:
  """Input position after consuming one more batch, which came from `epoch`."""
  if position and position["epoch"] == epoch:
    return {"epoch": epoch, "batch": position["batch"] + 1}
  return {"epoch": epoch, "batch": 1}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds a checkpoint) and returns final metrics."""
  # ---------------------------------------------------------------- logging
  writer = metric_writers.create_default_writer(
      os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0)
  writer.write_hparams(_flatten(config.to_dict()))

  # ------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh)
  rules = config.sharding_rules

  # ------------------------------------------------------------------ input
  teacher_dim, target_mean = teacher_stats(config)
  local_batch = input_pipeline.local_batch_size(config.input.batch_size)
  logging.info("global batch %d = %d per process x %d processes; %d per device",
               config.input.batch_size, local_batch, jax.process_count(),
               config.input.batch_size // jax.device_count())

  # ------------------------------------------------- model, state, sharding
  tx = make_optimizer(config)
  schedule = make_schedule(config)  # For logging; the optimizer holds its own copy.
  graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: build_student(config, teacher_dim)))

  def init_state():
    params = nnx.state(build_student(config, teacher_dim, config.seed))
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  abstract_state = jax.eval_shape(init_state)
  state_sharding = sharding.state_shardings(abstract_state, mesh, rules)
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_state, state_sharding)
  num_params = sum(x.size for x in jax.tree.leaves(abstract_params))
  logging.info("student: %.2fM parameters", num_params / 1e6)

  # ------------------------------------------------------------ update step
  base_rng = jax.random.key(config.seed)
  data_sharding = sharding.batch_sharding(mesh)
  compute_dtype = jnp.dtype(config.train.compute_dtype)
  spec = config.train.spec_augment

  def _augment(features, num_frames, rng):
    if not (spec.freq_masks or spec.time_masks):
      return features
    return features_lib.spec_augment(features, num_frames, rng, **spec)

  def loss_fn(params, batch, rng, train):
    model = nnx.merge(graphdef, jax.tree.map(lambda p: p.astype(compute_dtype), params))
    features = batch["features"].astype(compute_dtype)
    if train:
      features = _augment(features, batch["num_frames"], jax.random.fold_in(rng, 1))
      outputs = model(features, batch["num_frames"], nnx.Rngs(dropout=rng))
    else:
      model.eval()
      outputs = model(features, batch["num_frames"])
    outputs = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == compute_dtype else x,
                           outputs)
    total, parts = compute_losses(outputs, batch, target_mean, config.loss,
                                  model.log_temperature[...].astype(jnp.float32))
    return total, (parts, outputs)

  def train_step(state, batch):
    rng = jax.random.fold_in(base_rng, state["step"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (parts, outputs)), grads = grad_fn(state["params"], batch, rng, True)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    teacher_cos = jnp.sum(losses.unit(outputs["embedding"]) *
                          losses.unit(targets(batch, target_mean, config.loss)), -1).mean()
    metrics = {"loss": loss, **{f"loss_{k}": v for k, v in parts.items()},
               "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(params),
               "cosine_to_target": teacher_cos,
               "temperature": jnp.exp(params["log_temperature"][...]),
               "nonfinite_total": opt_state.total_notfinite,
               "nonfinite_consecutive": opt_state.notfinite_count}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  def eval_step(params, batch):
    loss, (_, outputs) = loss_fn(params, batch, None, False)
    return loss, losses.greedy_ctc_ids(outputs["ctc_logits"], outputs["ctc_mask"])

  with sharding.rules_context(mesh, rules):
    jit_train = jax.jit(train_step, in_shardings=(state_sharding, data_sharding),
                        out_shardings=(state_sharding, None), donate_argnums=0)
    jit_eval = jax.jit(eval_step, in_shardings=(state_sharding["params"], data_sharding))

  # ------------------------------------------------------------- checkpoint
  mgr = checkpoints.manager(workdir, config.train.keep_checkpoints)
  if mgr.latest_step() is not None:
    state, position = checkpoints.restore(mgr, mgr.latest_step(), abstract_state)
    logging.info("resuming from this workdir's step %d (data position %s)", int(state["step"]),
                 position)
  else:
    with sharding.rules_context(mesh, rules):
      state = jax.jit(init_state, out_shardings=state_sharding)()
    position = None
    if config.init_from:
      restored, _ = checkpoints.restore_params(config.init_from, abstract_state["params"])
      state["params"] = checkpoints.warm_start(state["params"], restored, config.init_skip)
      logging.info("initialised params from %s (optimizer state and step start fresh)",
                   config.init_from)
    else:
      logging.info("starting from scratch (seed %d)", config.seed)
  train_iter = input_pipeline.train_iterator(config, "train", teacher_dim, position)
  valid_batch = _with_weights(next(input_pipeline.eval_batches(
      config, "valid", teacher_dim, local_batch)))
  valid_refs = [list(labels[:n]) for labels, n, w in zip(
      valid_batch["ctc_labels"], valid_batch["num_labels"], valid_batch["weight"]) if w]

  def run_evaluators(params, step: int) -> dict:
    """The configured evaluators on the valid split, as flat scalars for TensorBoard."""
    from stalign import api, evaluate, evaluators  # They import this module.
    host_params = multihost_utils.process_allgather(params, tiled=True)  # Global values.
    emb = evaluate.embed_split(api.Model(config, graphdef, host_params, target_mean, step), "valid")
    results = {name: evaluators.get(name)(emb) for name in config.eval.during_training}
    return {f"valid/{k}": v for k, v in _flatten(results).items() if isinstance(v, (int, float))}

  # SIGTERM (preemption, scheduler) asks for a save at the next step boundary.
  preempted = {"flag": False}
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.update(flag=True))

  # ------------------------------------------------------------------- loop
  first_step = int(state["step"])
  total_steps = config.train.steps
  progress = tqdm.tqdm(total=total_steps, initial=first_step, desc="train", unit="step",
                       disable=jax.process_index() > 0, mininterval=2)
  history, last_metrics, compile_s = [], {}, None
  t_window, utts_window, secs_window = time.perf_counter(), 0, 0.0
  step = first_step
  while step < total_steps:
    local = next(train_iter)
    position = _advance(position, int(local["epoch"][0]))
    batch = sharding.global_batch(_with_weights(local), mesh)
    t0 = time.perf_counter()
    with sharding.rules_context(mesh, rules):
      state, metrics = jit_train(state, batch)
    step += 1
    utts_window += config.input.batch_size
    secs_window += float(local["duration"].sum()) * jax.process_count()
    if compile_s is None:
      jax.block_until_ready(metrics)
      compile_s = time.perf_counter() - t0
      logging.info("first step (compile + run) took %.1f s", compile_s)
      t_window = time.perf_counter()
      utts_window, secs_window = 0, 0.0
    progress.update(1)
    # One scalar per step: the run must stop before a poisoned update or checkpoint.
    if int(metrics["nonfinite_consecutive"]) >= config.train.max_nonfinite_steps:
      raise NonFiniteLossError(
          f"{config.train.max_nonfinite_steps} consecutive steps had NaN/Inf loss or gradients "
          f"(step {step}); their updates were skipped and no checkpoint was written after them. "
          "Lower train.lr, check the input data, or raise train.max_nonfinite_steps.")

    if step % config.train.log_every == 0 or step == total_steps:
      metrics = jax.device_get(metrics)
      elapsed = max(time.perf_counter() - t_window, 1e-9)
      metrics = {k: float(v) for k, v in metrics.items()}
      metrics.update(utterances_per_s=utts_window / elapsed, audio_s_per_s=secs_window / elapsed,
                     lr=float(schedule(step)))
      with sharding.rules_context(mesh, rules):
        vloss, ids = jit_eval(state["params"], sharding.global_batch(valid_batch, mesh))
      ids = np.asarray(multihost_utils.process_allgather(ids, tiled=True))[:len(valid_refs)]
      errors = sum(text_lib.edit_distance(text_lib.collapse(h), r) for h, r in zip(ids, valid_refs))
      metrics["valid_loss"] = float(vloss)
      # Character (or phoneme) error rate of greedy CTC decoding on one validation batch.
      metrics["valid_cer"] = errors / max(sum(len(r) for r in valid_refs), 1)
      writer.write_scalars(step, metrics)
      progress.set_postfix(loss=f"{metrics['loss']:.3f}", cer=f"{metrics['valid_cer']:.2f}",
                           utt_s=f"{metrics['utterances_per_s']:.0f}")
      history.append({"step": step, **metrics})
      last_metrics = metrics
      t_window, utts_window, secs_window = time.perf_counter(), 0, 0.0

    if config.eval.every_steps and step % config.eval.every_steps == 0:
      t0 = time.perf_counter()
      writer.write_scalars(step, run_evaluators(state["params"], step))
      t_window += time.perf_counter() - t0  # Throughput counts training time only.

    stop = preempted["flag"]
    if jax.process_count() > 1:
      stop = bool(multihost_utils.process_allgather(np.array(stop)).any())
    if step % config.train.checkpoint_every == 0 or step == total_steps or stop:
      ckpt_metrics = {"valid_loss": last_metrics["valid_loss"]} if last_metrics else None
      checkpoints.save(mgr, step, state, position, ckpt_metrics)
    if stop:
      logging.warning("SIGTERM received: saved step %d, exiting; rerun the same command to resume",
                      step)
      break

  progress.close()
  mgr.wait_until_finished()
  mgr.close()
  signal.signal(signal.SIGTERM, previous_handler)
  writer.flush()
  summary = {"steps": step, "preempted": preempted["flag"], "compile_s": compile_s,
             "last": last_metrics, "num_params": num_params}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "train_history.json"), "w") as f:
      json.dump({"summary": summary, "history": history}, f, indent=1)
  return summary

