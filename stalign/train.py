"""Training: the step functions, then one driver read top to bottom.

`loss_fn`, `train_step` and `eval_step` are module-level pure functions of
plain state pytrees (the student is rebuilt inside with `nnx.merge`), bound to
their fixed arguments with `functools.partial` before `jax.jit` (the train step
in `jit_train_step`, which the benchmarks share), so each can be tested alone.
`train_and_evaluate` keeps the phases apart with banner comments: logging, mesh,
input, model and sharding, update step, checkpoint restore, loop (metrics,
validation, evaluators, checkpoints, preemption), final save.

The loss is composed in `losses.compute_losses`. Evaluation during training has
one reader (`input_pipeline.eval_batches` over the valid split) and one compiled
program (`eval_step`): `run_validation` sums its losses and CTC errors, and
`run_evaluators` hands its embeddings to the evaluators through
`evaluators.split`, the seam the evaluation driver uses with an `api.Model`. So
training imports neither the inference API nor the evaluation CLI
(`tests/test_architecture.py`).
"""

from collections.abc import Iterator
import functools
import json
import os
import signal
import tempfile
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from stalign import checkpoints
from stalign import evaluators
from stalign import fs
from stalign import input_pipeline
from stalign import losses
from stalign import sharding
from stalign import utils
from stalign.data import features as features_lib
from stalign.data import layout
from stalign.data import text as text_lib
from stalign.evaluators import split as split_lib
from stalign.models import student as student_lib


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps with NaN/Inf loss or gradients."""


# ----------------------------------------------------------------- optimizer


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup, then cosine or linear decay to 2% of the peak, in optimizer updates.

  `train.steps` and `train.warmup_steps` count micro-batches; with gradient
  accumulation the optimizer (and so this schedule) advances once per
  `train.grad_accumulation` of them, so both are divided by it.
  """
  t = config.train
  updates = max(t.steps // t.grad_accumulation, 1)
  warmup = t.warmup_steps // t.grad_accumulation
  decay_steps = max(updates - warmup, 1)
  if t.schedule == "cosine":
    tail = optax.cosine_decay_schedule(t.lr, decay_steps, alpha=0.02)
  else:
    tail = optax.linear_schedule(t.lr, 0.02 * t.lr, decay_steps)
  return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup), tail], [warmup])


def make_optimizer(
  config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """AdamW with clipping, optional accumulation, and a guard that skips non-finite updates."""
  t = config.train
  parts = [
    optax.clip_by_global_norm(t.grad_clip),
    optax.adamw(schedule, weight_decay=t.weight_decay),
  ]
  if (config.model.whisper_tuned_layers or config.model.teacher_layers) and (
    t.pretrained_lr_factor != 1
  ):
    # Pretrained blocks move at a fraction of the fresh head's rate (decay included), so a
    # few thousand noisy steps on little data refine them rather than overwrite them.
    parts.append(optax.masked(optax.scale(t.pretrained_lr_factor), is_pretrained))
  tx = optax.chain(*parts)
  if t.grad_accumulation > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=t.grad_accumulation)
  # Skips (and counts) every update whose gradients are not finite, however
  # many in a row, so the parameters can never be poisoned; the loop reads the
  # counters at log and checkpoint steps and stops a run that keeps failing.
  return optax.apply_if_finite(tx, max_consecutive_errors=np.iinfo(np.int32).max)


def is_pretrained(params):
  """True for each parameter warm-started from pretrained weights: the student's Whisper blocks
  (`Student.whisper`) and the teacher's layers on top (`Student.teacher_top`, its fresh input
  projection excepted)."""

  def pretrained(path, _) -> bool:
    keys = [getattr(p, "key", None) for p in path]
    return keys[0] == "whisper" or (keys[0] == "teacher_top" and keys[1] != "project")

  return jax.tree_util.tree_map_with_path(pretrained, params)


# ---------------------------------------------------------------- step functions


def loss_fn(
  params,
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
  params,
  batch: dict,
  *,
  graphdef: nnx.GraphDef,
  config: ml_collections.ConfigDict,
  target_mean: jax.Array,
) -> dict:
  """Loss (summed over the batch's real rows, to average over a split), greedy CTC ids, and
  the embeddings and pooled layers the evaluators read: the one forward pass of evaluation in
  training (`run_validation`, `run_evaluators`)."""
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


# ------------------------------------------------------------------- helpers


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


def advance(position: dict | None, epoch: int) -> dict:
  """Input position after consuming one more batch, which came from `epoch`."""
  if position and position["epoch"] == epoch:
    return {"epoch": epoch, "batch": position["batch"] + 1}
  return {"epoch": epoch, "batch": 1}


def check_nonfinite(metrics: dict, config: ml_collections.ConfigDict, step: int) -> None:
  """Stops a run whose last `train.max_nonfinite_steps` or more updates all had NaN/Inf.

  Their updates were skipped by the optimizer (`make_optimizer`), so whatever
  is saved holds finite parameters; a streak that ended before this check only
  shows in the logged `nonfinite_total`.
  """
  consecutive = int(metrics["nonfinite_consecutive"])
  if consecutive >= config.train.max_nonfinite_steps:
    raise NonFiniteLossError(
      f"the {consecutive} steps up to step {step} had NaN/Inf loss or gradients; their updates "
      "were skipped, so every checkpoint holds finite params. Lower train.lr, check the input "
      "data, or raise train.max_nonfinite_steps."
    )


def _write_history(workdir: str, summary: dict, history: dict) -> None:
  if jax.process_index() == 0:
    with fs.atomic_write(os.path.join(workdir, "train_history.json")) as f:
      json.dump({"summary": summary, **history}, f, indent=1)


class _TensorBoard:
  """The metric writer, and where its event files go.

  Event files grow by appending, which an object store cannot do: for a
  `gs://` workdir they are written to a local folder and uploaded whole at
  each `flush` (checkpoint steps and the end), by process 0 only.
  """

  def __init__(self, workdir: str):
    self.folder = os.path.join(workdir, "tensorboard")
    remote = fs.is_remote(workdir)
    self.local = tempfile.mkdtemp(prefix="stalign-tensorboard-") if remote else self.folder
    self.writer = metric_writers.create_default_writer(
      self.local, just_logging=jax.process_index() > 0
    )

  def flush(self) -> None:
    self.writer.flush()
    if self.local != self.folder and jax.process_index() == 0:
      fs.sync_folder(self.local, self.folder)


# ------------------------------------------------------ evaluation in training


def valid_batches(config: ml_collections.ConfigDict, teacher_dim: int) -> Iterator[dict]:
  """The valid split in global batches, whole on every process: what training evaluates on."""
  return input_pipeline.eval_batches(config, "valid", teacher_dim, config.input.batch_size)


def evaluate_batch(
  jit_eval: jax.stages.Wrapped,
  params: nnx.State,
  whole: dict,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
) -> dict:
  """`jit_eval` (`eval_step`) on one batch that every process holds whole, each feeding its rows."""
  with sharding.rules_context(mesh, config.sharding_rules):
    batch = sharding.global_batch(input_pipeline.process_rows(device_batch(whole)), mesh)
    return jit_eval(params, batch)


def run_validation(
  jit_eval: jax.stages.Wrapped,
  params: nnx.State,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  teacher_dim: int,
) -> dict:
  """Loss and CTC error rate over the whole valid split (padding rows excluded).

  Every process reads the whole split in global batches and feeds its own rows,
  so the figures do not depend on the process count. `valid_loss` averages each
  batch's loss weighted by its utterances; it picks the best checkpoint.
  `valid_cer` is the character (or phoneme) error rate of greedy CTC decoding
  over every valid utterance.
  """
  loss_sum = rows = errors = reference_length = 0.0
  for whole in valid_batches(config, teacher_dim):
    out = evaluate_batch(jit_eval, params, whole, config, mesh)
    loss_sum += float(out["loss_sum"])
    rows += float(out["rows"])
    ids = np.asarray(multihost_utils.process_allgather(out["ctc_ids"], tiled=True))
    for hyp, labels, n, real in zip(ids, whole["ctc_labels"], whole["num_labels"], whole["valid"]):
      if real:
        # Targets longer than their bucket can align are cut (and left out of the CTC loss).
        n = min(int(n), len(labels))
        errors += text_lib.edit_distance(text_lib.collapse(hyp), list(labels[:n]))
        reference_length += n
  return {"valid_loss": loss_sum / max(rows, 1), "valid_cer": errors / max(reference_length, 1)}


def run_evaluators(
  jit_eval: jax.stages.Wrapped,
  params: nnx.State,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  teacher_dim: int,
  target_mean: np.ndarray,
) -> dict:
  """The `eval.during_training` evaluators on the valid split, as flat `valid/...` scalars.

  The split is read and embedded as `run_validation` reads and runs it (one
  reader, one compiled program), then bundled by `evaluators.split.embed`, the
  seam `stalign.evaluate` embeds its splits through with an `api.Model`. The
  teacher embeddings come from the records, so no teacher is loaded.
  """

  def embed_speech(whole: dict) -> tuple[np.ndarray, np.ndarray]:
    out = evaluate_batch(jit_eval, params, whole, config, mesh)
    gathered = multihost_utils.process_allgather((out["embedding"], out["layers"]), tiled=True)
    return tuple(np.asarray(x) for x in gathered)

  # The space the student was trained to match, as the evaluation driver compares in.
  centre = target_mean if config.loss.centre_targets else np.zeros_like(target_mean)
  emb = split_lib.embed(valid_batches(config, teacher_dim), embed_speech, None, centre)
  results = {name: evaluators.get(name)(emb) for name in config.eval.during_training}
  return {
    f"valid/{k}": v for k, v in utils.flatten_dict(results).items() if isinstance(v, (int, float))
  }


# -------------------------------------------------------------------- driver


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds a checkpoint) and returns a summary."""
  # ---------------------------------------------------------------- logging
  tensorboard = _TensorBoard(workdir)
  writer = tensorboard.writer
  writer.write_hparams(
    {
      k: v if isinstance(v, (int, float, str, bool)) else str(v)
      for k, v in utils.flatten_dict(config.to_dict()).items()
    }
  )

  # ------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh)
  rules = config.sharding_rules

  # ------------------------------------------------------------------ input
  teacher_dim, target_mean = layout.read_teacher_stats(config.data_dir)
  # Features and labels as this config would build them (`--stages=train` may run alone).
  layout.check_built_with(config, "train", layout.read_summary(config.data_dir, "train"))
  local_batch = input_pipeline.local_batch_size(config.input.batch_size)
  logging.info(
    "global batch %d = %d per process x %d processes; %d per device",
    config.input.batch_size,
    local_batch,
    jax.process_count(),
    config.input.batch_size // jax.device_count(),
  )

  # ------------------------------------------------- model, state, sharding
  schedule = make_schedule(config)
  tx = make_optimizer(config, schedule)
  graphdef, abstract_params = nnx.split(
    nnx.eval_shape(lambda: student_lib.build(config, teacher_dim))
  )
  abstract_state, state_sharding = sharded_state_shapes(config, tx, teacher_dim, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(abstract_params))
  logging.info("student: %.2fM parameters", num_params / 1e6)

  # ------------------------------------------------------------ update step
  data_sharding = sharding.batch_sharding(mesh)
  with sharding.rules_context(mesh, rules):
    text_bank = layout.read_text_bank(config.data_dir) if config.loss.bank_weight else None
    jit_train = jit_train_step(
      config, graphdef, tx, target_mean, state_sharding, data_sharding, text_bank
    )
    jit_eval = jax.jit(
      functools.partial(eval_step, graphdef=graphdef, config=config, target_mean=target_mean),
      in_shardings=(state_sharding["params"], data_sharding),
    )

  # ------------------------------------------------------------- checkpoint
  mgr = checkpoints.manager(workdir, config.train.keep_checkpoints)
  if mgr.latest_step() is not None:
    state, position = checkpoints.restore(mgr, mgr.latest_step(), abstract_state)
    logging.info(
      "resuming from this workdir's step %d (data position %s)", int(state["step"]), position
    )
  else:
    with sharding.rules_context(mesh, rules):
      state = jax.jit(
        functools.partial(init_state, config, tx, teacher_dim), out_shardings=state_sharding
      )()
    position = None
    if config.init_from:
      restored, _ = checkpoints.restore_params(config.init_from, abstract_state["params"])
      state["params"] = checkpoints.warm_start(state["params"], restored, config.init_skip)
      logging.info(
        "initialised params from %s (optimizer state and step start fresh)", config.init_from
      )
    else:
      logging.info("starting from scratch (seed %d)", config.seed)
    f = config.features
    if f.frontend == "whisper":
      tuned = config.model.whisper_tuned_layers
      logging.info(
        "Whisper %s: blocks 0-%d frozen (in the data), %d more fine-tuned from it at %g x lr",
        f.whisper_weights,
        f.whisper_layers - 1,
        tuned,
        config.train.pretrained_lr_factor if tuned else 0,
      )
  train_iter = input_pipeline.train_iterator(config, "train", teacher_dim, position)

  # SIGTERM (preemption, scheduler) asks for a save at the next step boundary.
  preempted = {"flag": False}
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.update(flag=True))

  # ------------------------------------------------------------------- loop
  first_step = int(state["step"])
  total_steps = config.train.steps
  report_progress = periodic_actions.ReportProgress(
    num_train_steps=total_steps, writer=writer, every_steps=config.train.log_every
  )
  progress = tqdm.tqdm(
    total=total_steps,
    initial=first_step,
    desc="train",
    unit="step",
    disable=jax.process_index() > 0 or None,
    mininterval=2,
  )
  # Log steps, checkpoint steps (validation) and evaluator steps; train_history.json holds all
  # three, so readers (the study's curves) need no TensorBoard event files.
  history = {"train": [], "valid": [], "evaluators": []}
  compile_s = None
  step = first_step
  try:
    while step < total_steps:
      local = next(train_iter)
      position = advance(position, int(local["epoch"][0]))
      batch = sharding.global_batch(device_batch(local), mesh)
      t0 = time.perf_counter()
      with sharding.rules_context(mesh, rules):
        state, metrics = jit_train(state, batch)
      step += 1
      if compile_s is None:
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        logging.info("first step (compile + run) took %.1f s", compile_s)
      report_progress(step)
      progress.update(1)
      stop = preempted["flag"]
      if jax.process_count() > 1:
        # Hosts agree on stopping at the same step; asking them only every log
        # step keeps a cross-host exchange out of every step.
        stop = step % config.train.log_every == 0 and bool(
          multihost_utils.process_allgather(np.array(stop)).any()
        )
      save = step % config.train.checkpoint_every == 0 or step == total_steps or stop
      # The host reads the step's results only at log and checkpoint steps, so
      # dispatch runs ahead of the device in between (no per-step sync).
      if save or step % config.train.log_every == 0:
        check_nonfinite(metrics, config, step)

      if step % config.train.log_every == 0 or step == total_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics["lr"] = float(schedule(step // config.train.grad_accumulation))  # Next update's.
        writer.write_scalars(step, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}")
        history["train"].append({"step": step, **metrics})

      if config.eval.every_steps and step % config.eval.every_steps == 0:
        with report_progress.timed("evaluators"):
          evaluated = run_evaluators(
            jit_eval, state["params"], config, mesh, teacher_dim, target_mean
          )
          writer.write_scalars(step, evaluated)
        history["evaluators"].append({"step": step, **evaluated})

      if save:
        with report_progress.timed("validate"):
          valid = run_validation(jit_eval, state["params"], config, mesh, teacher_dim)
        writer.write_scalars(step, valid)
        history["valid"].append({"step": step, **valid})
        checkpoints.save(mgr, step, state, position, valid)
        tensorboard.flush()
      if stop:
        logging.warning(
          "SIGTERM received: saved step %d, exiting; rerun the same command to resume", step
        )
        break
  finally:
    # ----------------------------------------------------------- final save
    # Also when the run stops on an error: no save left half-written, and the
    # caller's SIGTERM handler back in place.
    progress.close()
    mgr.wait_until_finished()
    mgr.close()
    signal.signal(signal.SIGTERM, previous_handler)
    tensorboard.flush()
  summary = {
    "steps": step,
    "preempted": preempted["flag"],
    "compile_s": compile_s,
    "last": history["train"][-1] if history["train"] else {},
    "valid": history["valid"][-1] if history["valid"] else {},
    "num_params": num_params,
  }
  _write_history(workdir, summary, history)
  return summary
