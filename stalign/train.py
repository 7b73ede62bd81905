"""Training: `train_and_evaluate`, the driver of a run, read top to bottom.

It keeps the phases apart with banner comments: logging, mesh, input, model and
sharding, update step, checkpoint restore, loop (metrics, validation,
evaluators, checkpoints, preemption), final save. What it drives lives in the
training parts below it: the optimizer (`train_optimizer`), the step functions
and train state (`train_steps`), evaluation on the valid split
(`train_validation`) and what the run records (`train_log`).
"""

import functools
import signal
import time

from absl import logging
from clu import periodic_actions
from flax import nnx
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from stalign import checkpoints
from stalign import input_pipeline
from stalign import sharding
from stalign import train_log
from stalign import train_optimizer
from stalign import train_steps
from stalign import train_validation
from stalign import utils
from stalign.data import layout
from stalign.models import student as student_lib


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps with NaN/Inf loss or gradients."""


def advance(position: dict | None, epoch: int) -> dict:
  """Input position after consuming one more batch, which came from `epoch`."""
  if position and position["epoch"] == epoch:
    return {"epoch": epoch, "batch": position["batch"] + 1}
  return {"epoch": epoch, "batch": 1}


def check_nonfinite(metrics: dict, config: ml_collections.ConfigDict, step: int) -> None:
  """Stops a run whose last `train.max_nonfinite_steps` or more updates all had NaN/Inf.

  Their updates were skipped by the optimizer (`train_optimizer.make_optimizer`), so whatever
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds a checkpoint) and returns a summary."""
  # ---------------------------------------------------------------- logging
  tensorboard = train_log.TensorBoard(workdir)
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
  schedule = train_optimizer.make_schedule(config)
  tx = train_optimizer.make_optimizer(config, schedule)
  graphdef, abstract_params = nnx.split(
    nnx.eval_shape(lambda: student_lib.build(config, teacher_dim))
  )
  abstract_state, state_sharding = train_steps.sharded_state_shapes(config, tx, teacher_dim, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(abstract_params))
  logging.info("student: %.2fM parameters", num_params / 1e6)

  # ------------------------------------------------------------ update step
  data_sharding = sharding.batch_sharding(mesh)
  with sharding.rules_context(mesh, rules):
    text_bank = layout.read_text_bank(config.data_dir) if config.loss.bank_weight else None
    jit_train = train_steps.jit_train_step(
      config, graphdef, tx, target_mean, state_sharding, data_sharding, text_bank
    )
    jit_eval = jax.jit(
      functools.partial(
        train_steps.eval_step, graphdef=graphdef, config=config, target_mean=target_mean
      ),
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
        functools.partial(train_steps.init_state, config, tx, teacher_dim),
        out_shardings=state_sharding,
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
  # Log steps, checkpoint steps (validation) and evaluator steps, after those of the run this one
  # resumes (up to its checkpoint): train_history.json holds all three.
  history = train_log.History(workdir, first_step)
  compile_s = None

  def summarize(step: int) -> dict:
    """What the run did up to `step`: train_history.json's `summary`, and what this returns."""
    return {
      "steps": step,
      "preempted": preempted["flag"],
      "compile_s": compile_s,
      "last": history.last("train"),
      "valid": history.last("valid"),
      "num_params": num_params,
    }

  step = first_step
  try:
    while step < total_steps:
      local = next(train_iter)
      position = advance(position, int(local["epoch"][0]))
      batch = sharding.global_batch(train_steps.device_batch(local), mesh)
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
        history.add("train", step, metrics)

      if config.eval.every_steps and step % config.eval.every_steps == 0:
        with report_progress.timed("evaluators"):
          evaluated = train_validation.run_evaluators(
            jit_eval, state["params"], config, mesh, teacher_dim, target_mean
          )
          writer.write_scalars(step, evaluated)
        history.add("evaluators", step, evaluated)

      if save:
        with report_progress.timed("validate"):
          valid = train_validation.run_validation(
            jit_eval, state["params"], config, mesh, teacher_dim
          )
        writer.write_scalars(step, valid)
        history.add("valid", step, valid)
        checkpoints.save(mgr, step, state, position, valid)
        tensorboard.flush()
        # With each checkpoint, so a hard kill (SIGKILL, out of memory) loses no recorded step
        # that its resume will not record again.
        history.write(summarize(step))
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
    tensorboard.close()
  summary = summarize(step)
  history.write(summary)
  return summary
