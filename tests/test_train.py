from collections.abc import Callable
import functools
import json
import os
import shutil
import signal
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import optax
import pytest

import stalign
from stalign import api
from stalign import evaluate
from stalign import evaluators
from stalign import input_pipeline
from stalign import sharding
from stalign import train
from stalign import train_optimizer
from stalign import train_steps
from stalign import train_validation
from stalign import utils
from stalign.data import layout
from stalign.models import student as student_lib


def _history(workdir):
  with open(os.path.join(workdir, "train_history.json")) as f:
    return json.load(f)


def _params(config, workdir, step=None):
  return jax.tree.leaves(stalign.load(workdir, step=step, config=config).params)


def _flat_params(config, workdir, step=None):
  """{path: array} of a checkpoint's params."""
  return dict(nnx.to_flat_state(stalign.load(workdir, step=step, config=config).params))


def _with(config, **overrides):
  """A copy of `config` with `section__name=value` overrides."""
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def _run(config, workdir, **overrides):
  c = _with(config, train__steps=30, train__log_every=3, train__lr=3e-3, **overrides)
  train.train_and_evaluate(c, workdir)
  return [h["loss"] for h in _history(workdir)["train"]]


def _assert_falls(name, losses):
  assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:2]), (name, losses)


@pytest.fixture(scope="module")
def step_parts(prepared_config):
  """Everything the step functions are bound to, and one real training batch."""
  c = prepared_config.copy_and_resolve_references()
  dim, mean = layout.read_teacher_stats(c.data_dir)
  batch = train_steps.device_batch(next(input_pipeline.train_iterator(c, "train", dim)))
  tx = train_optimizer.make_optimizer(c, train_optimizer.make_schedule(c))
  graphdef, _ = nnx.split(student_lib.build(c, dim))
  return c, graphdef, tx, mean, train_steps.init_state(c, tx, dim), batch


def test_runs_that_differ_only_in_seed_compile_to_one_program(step_parts):
  """The seed is state, not code: the persistent cache serves every seed of a study cell."""
  c, graphdef, tx, mean, _, batch = step_parts
  programs, keys = [], []
  for seed in (0, 7):
    cs = c.copy_and_resolve_references()
    cs.seed = seed
    step = jax.jit(
      functools.partial(
        train_steps.train_step, graphdef=graphdef, tx=tx, config=cs, target_mean=mean
      )
    )
    state = train_steps.init_state(cs, tx, batch["teacher"].shape[-1])
    programs.append(step.lower(state, batch).as_text())
    keys.append(np.asarray(state["rng"]))
  assert programs[0] == programs[1]
  assert not np.array_equal(*keys)


def test_train_step_alone_fits_one_batch_and_its_loss_is_the_weighted_sum(step_parts):
  c, graphdef, tx, mean, state, batch = step_parts
  step = jax.jit(
    functools.partial(train_steps.train_step, graphdef=graphdef, tx=tx, config=c, target_mean=mean)
  )
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state["step"]) == 12 and losses[-1] < 0.8 * losses[0], losses
  weighted = (
    c.loss.distill_weight * metrics["loss_distill"]
    + c.loss.contrastive_weight * metrics["loss_contrastive"]
    + c.loss.ctc_weight * metrics["loss_ctc"]
  )
  np.testing.assert_allclose(metrics["loss"], weighted, rtol=1e-6)
  assert int(metrics["nonfinite_total"]) == 0


def test_loss_fn_is_deterministic_in_eval_and_draws_dropout_from_the_rng(step_parts):
  c, graphdef, _, mean, state, batch = step_parts
  loss = functools.partial(train_steps.loss_fn, graphdef=graphdef, config=c, target_mean=mean)
  params = state["params"]
  eval_a, eval_b = (float(loss(params, batch, None, train=False)[0]) for _ in range(2))
  assert eval_a == eval_b
  key = jax.random.key
  train_0 = float(loss(params, batch, key(0), train=True)[0])
  assert train_0 == float(loss(params, batch, key(0), train=True)[0])
  assert train_0 != float(loss(params, batch, key(1), train=True)[0]) != eval_a


def test_eval_step_counts_real_rows_only(step_parts):
  c, graphdef, _, mean, state, batch = step_parts
  step = jax.jit(
    functools.partial(train_steps.eval_step, graphdef=graphdef, config=c, target_mean=mean)
  )
  half = len(batch["weight"]) // 2
  masked = {**batch, "weight": np.where(np.arange(2 * half) < half, 1.0, 0.0).astype(np.float32)}
  other = dict(masked)
  other["features"] = masked["features"].copy()
  other["features"][half:] = np.random.default_rng(0).standard_normal(
    other["features"][half:].shape
  )
  other["teacher"] = masked["teacher"][::-1].copy()
  other["teacher"][:half] = masked["teacher"][:half]
  a, b = step(state["params"], masked), step(state["params"], other)
  assert float(a["rows"]) == half
  np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=1e-5)
  np.testing.assert_array_equal(a["ctc_ids"][:half], b["ctc_ids"][:half])


def test_loss_goes_down_for_every_regime(prepared_config, tmp_path):
  """(a) distillation, (b) ASR pretraining then distillation from it, (c) multitask, (d) (b)+(c)."""
  distill = dict(loss__distill="cosine", loss__contrastive_weight=1.0, loss__ctc_weight=0.0)
  asr = dict(loss__distill="none", loss__contrastive_weight=0.0, loss__ctc_weight=1.0)
  multitask = dict(loss__distill="cosine", loss__contrastive_weight=1.0, loss__ctc_weight=0.3)
  asr_dir = str(tmp_path / "asr")
  _assert_falls("a", _run(prepared_config, str(tmp_path / "a"), **distill))
  _assert_falls("b-asr", _run(prepared_config, asr_dir, **asr))
  _assert_falls("c", _run(prepared_config, str(tmp_path / "c"), **multitask))
  c = prepared_config.copy_and_resolve_references()
  c.init_from, c.init_skip = asr_dir, ("pool_",)
  for name, regime in (("b", distill), ("d", multitask)):
    _assert_falls(name, _run(c, str(tmp_path / name), **regime))


def test_two_accumulated_micro_batches_make_the_update_of_their_union(step_parts):
  """Accumulating 2 x 8 rows must give the one update a batch of 16 gives.

  Only the distillation loss is a plain mean over rows (in-batch InfoNCE and
  per-character CTC are normalised per batch), so it alone is on. Adam's first
  step is nearly the gradient's sign, so its first moment (0.1 x the clipped
  gradient) is compared too.
  """
  c = _with(
    step_parts[0],
    model__dropout=0.0,
    loss__contrastive_weight=0.0,
    loss__ctc_weight=0.0,
    train__warmup_steps=0,  # The first update has a non-zero learning rate.
    input__batch_size=16,
  )
  # Per-row random augmentation draws depend on the batch's size: off, like dropout.
  c.train.channel_augment.update(dict(warp=0.0, eq_db=0.0, lowpass_prob=0.0))
  dim, mean = layout.read_teacher_stats(c.data_dir)
  batch = train_steps.device_batch(next(input_pipeline.train_iterator(c, "train", dim)))
  halves = [{k: v[:8] for k, v in batch.items()}, {k: v[8:] for k, v in batch.items()}]
  graphdef, _ = nnx.split(student_lib.build(c, dim))  # Dropout's rate lives in the graphdef.
  states = {}
  for accumulation, batches in ((1, [batch]), (2, halves)):
    ca = _with(c, train__grad_accumulation=accumulation)
    tx = train_optimizer.make_optimizer(ca, train_optimizer.make_schedule(ca))
    step = jax.jit(
      functools.partial(
        train_steps.train_step, graphdef=graphdef, tx=tx, config=ca, target_mean=mean
      )
    )
    state = initial = train_steps.init_state(ca, tx, dim)
    for i, micro_batch in enumerate(batches):
      state, _ = step(state, micro_batch)
      if i < accumulation - 1:  # Micro-steps only accumulate.
        jax.tree.map(np.testing.assert_array_equal, state["params"], initial["params"])
    states[accumulation] = state
  one, two = states[1], states[2]
  mu_one, mu_two = (optax.tree_utils.tree_get(s["opt_state"], "mu") for s in (one, two))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-9), mu_one, mu_two)
  # Where a gradient is near Adam's eps (1e-8; e.g. attention's key bias, which cannot change
  # a softmax over keys) the update amplifies rounding noise: compare the others.
  mu, a, b, start = (
    {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(tree)}
    for tree in (mu_one, one["params"], two["params"], initial["params"])
  )
  clear = {path: np.abs(m) > 1e-7 for path, m in mu.items()}
  for path, keep in clear.items():
    np.testing.assert_allclose(
      a[path][keep], b[path][keep], rtol=1e-5, atol=1e-7, err_msg=str(path)
    )
    assert (a[path][keep] != start[path][keep]).all(), path
  # Left out: the CTC head (its loss is off) and a few near-zero gradients.
  assert sum(k.sum() for k in clear.values()) > 0.9 * sum(k.size for k in clear.values())


def test_bf16_compute_changes_the_loss_by_rounding_only(step_parts):
  """bf16 compute really runs in bf16 (the loss moves) and stays within its precision."""
  c, graphdef, _, mean, state, batch = step_parts
  loss = {}
  for dtype in ("float32", "bfloat16"):
    bound = dict(graphdef=graphdef, config=_with(c, train__compute_dtype=dtype), target_mean=mean)
    loss_fn = jax.jit(functools.partial(train_steps.loss_fn, train=False, **bound))
    loss[dtype] = float(loss_fn(state["params"], batch, None)[0])
  assert loss["bfloat16"] != loss["float32"]
  np.testing.assert_allclose(loss["bfloat16"], loss["float32"], rtol=5e-2)


def test_spec_augment_masks_change_the_training_loss_and_nothing_else(step_parts):
  """Same RNG key: masks change the loss; masks of width 0 leave it (and dropout) untouched."""
  c, graphdef, _, mean, state, batch = step_parts
  settings = {
    "off": dict(freq_masks=0, freq_width=12, time_masks=0, time_width=20),
    "on": dict(freq_masks=2, freq_width=12, time_masks=2, time_width=20),
    "empty": dict(freq_masks=2, freq_width=0, time_masks=2, time_width=0),
  }
  loss = {}
  for name, spec in settings.items():
    cs = c.copy_and_resolve_references()
    cs.train.spec_augment.update(spec)
    loss_fn = functools.partial(
      train_steps.loss_fn, graphdef=graphdef, config=cs, target_mean=mean, train=True
    )
    loss[name] = float(jax.jit(loss_fn)(state["params"], batch, jax.random.key(0))[0])
  assert loss["on"] != loss["off"]
  assert loss["empty"] == loss["off"]


def _input_interrupted(at: int, interrupt: Callable[[], None]):
  """The training input, calling `interrupt` (a signal, an error) as it reads batch `at`."""
  real_iterator = input_pipeline.train_iterator

  def interrupted(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i == at:
        interrupt()
      yield batch

  return interrupted


def _sigterm() -> None:
  os.kill(os.getpid(), signal.SIGTERM)  # What a preempted VM receives.


def _history_config(config):
  """8 steps logged every 2, checkpointed every 4, with an evaluator every 2."""
  c = _with(config, train__steps=8, train__log_every=2, train__checkpoint_every=4)
  c.eval.every_steps, c.eval.during_training = 2, ("retrieval",)
  return c


def test_sigterm_saves_and_resume_matches_uninterrupted(prepared_config, tmp_path, monkeypatch):
  c = prepared_config.copy_and_resolve_references()
  c.train.steps, c.train.checkpoint_every = 12, 100
  train.train_and_evaluate(c, str(tmp_path / "full"))

  real_iterator = input_pipeline.train_iterator
  monkeypatch.setattr(input_pipeline, "train_iterator", _input_interrupted(5, _sigterm))
  summary = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert summary["preempted"] and summary["steps"] == 6
  monkeypatch.setattr(input_pipeline, "train_iterator", real_iterator)
  summary = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert summary["steps"] == 12 and not summary["preempted"]
  for a, b in zip(_params(c, str(tmp_path / "full")), _params(c, str(tmp_path / "resumed"))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resumed_run_keeps_the_history_up_to_its_checkpoint(prepared_config, tmp_path, monkeypatch):
  """train_history.json after a kill and a resume: the killed run's entries up to the checkpoint
  resumed from (evaluator figures included) stay as recorded, the steps after it appear once.

  The killed run saves steps 4 and 6; step 6's checkpoint is then removed, as when a kill cuts
  its save short, so the resumed run starts from 4 and records steps 6 and 8 anew.
  """
  c = _history_config(prepared_config)
  workdir = str(tmp_path / "run")
  real_iterator = input_pipeline.train_iterator
  monkeypatch.setattr(input_pipeline, "train_iterator", _input_interrupted(5, _sigterm))
  assert train.train_and_evaluate(c, workdir)["steps"] == 6
  killed = _history(workdir)
  assert [e["step"] for e in killed["evaluators"]] == [2, 4, 6]
  assert [e["step"] for e in killed["valid"]] == [4, 6]
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))

  monkeypatch.setattr(input_pipeline, "train_iterator", real_iterator)
  summary = train.train_and_evaluate(c, workdir)
  assert summary["steps"] == 8 and not summary["preempted"]
  resumed = _history(workdir)
  for section, steps in (("train", [2, 4, 6, 8]), ("evaluators", [2, 4, 6, 8]), ("valid", [4, 8])):
    assert [e["step"] for e in resumed[section]] == steps, section
    kept = [e for e in killed[section] if e["step"] <= 4]
    assert resumed[section][: len(kept)] == kept, section
  assert resumed["summary"]["valid"] == resumed["valid"][-1]


def test_a_hard_kill_keeps_the_history_up_to_the_last_checkpoint(
  prepared_config, tmp_path, monkeypatch
):
  """A run that dies without a chance to finish (an error out of its input here; SIGKILL or
  running out of memory alike) has written train_history.json with its last checkpoint."""
  c = _history_config(prepared_config)
  workdir = str(tmp_path / "run")

  def out_of_memory():
    raise MemoryError("killed")

  monkeypatch.setattr(input_pipeline, "train_iterator", _input_interrupted(5, out_of_memory))
  with pytest.raises(MemoryError):
    train.train_and_evaluate(c, workdir)
  history = _history(workdir)
  for section, steps in (("train", [2, 4]), ("evaluators", [2, 4]), ("valid", [4])):
    assert [e["step"] for e in history[section]] == steps, section
  assert history["summary"]["steps"] == 4


def test_nonfinite_updates_are_skipped_then_the_run_stops(prepared_config, tmp_path, monkeypatch):
  """Clean steps 1-2, then NaN input: steps 3-4 are skipped, step 5 (the 3rd) stops the run.

  Every step is checkpointed, so the skipped steps' checkpoints show what the
  run held: step 2's params, unchanged and finite.
  """
  c = _with(
    prepared_config,
    train__steps=20,
    train__max_nonfinite_steps=3,
    train__checkpoint_every=1,
    train__keep_checkpoints=20,
  )
  real_iterator = input_pipeline.train_iterator

  def poisoned_from_step_3(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i >= 2:
        batch["features"] = batch["features"] * np.nan
      yield batch

  monkeypatch.setattr(input_pipeline, "train_iterator", poisoned_from_step_3)
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteLossError, match=r"the 3 steps up to step 5 had NaN/Inf"):
    train.train_and_evaluate(c, workdir)
  # Steps 3-4 were under the limit, so they were checkpointed; step 5 was not. (The
  # raise does not wait for step 4's async save: it may still be a temporary folder.)
  saved = os.listdir(os.path.join(workdir, "checkpoints"))
  steps = sorted(int(name) for name in saved if name.isdigit())
  assert steps[:3] == [1, 2, 3] and steps[3:] in ([], [4]), saved
  assert {name.split(".")[0] for name in saved} <= {"1", "2", "3", "4"}, saved
  step_2 = _params(c, workdir, step=2)
  assert all(np.isfinite(p).all() for p in step_2)
  assert any(not np.array_equal(a, b) for a, b in zip(_params(c, workdir, step=1), step_2))
  for skipped in steps[2:]:
    for a, b in zip(_params(c, workdir, step=skipped), step_2):
      np.testing.assert_array_equal(a, b)


def test_warm_start_loads_the_encoder_and_keeps_skipped_params_fresh(prepared_config, tmp_path):
  """Regimes (b)/(d): `init_from` hands over the encoder, `init_skip` params start fresh.

  The warm run's first update has learning rate 0 (warmup starts at 0), so its
  step-1 checkpoint holds exactly the params it started from.
  """
  asr = _with(
    prepared_config,
    train__steps=2,
    loss__distill="none",
    loss__contrastive_weight=0.0,
    loss__ctc_weight=1.0,
  )
  asr.seed = 1  # Another init than the warm run's: fresh and restored params differ.
  asr_dir, warm_dir = str(tmp_path / "asr"), str(tmp_path / "warm")
  train.train_and_evaluate(asr, asr_dir)
  c = _with(prepared_config, train__steps=1, train__log_every=1)
  c.init_from, c.init_skip = asr_dir, ("pool_",)
  assert float(train_optimizer.make_schedule(c)(0)) == 0.0
  train.train_and_evaluate(c, warm_dir)
  dim, _ = layout.read_teacher_stats(c.data_dir)
  fresh = dict(nnx.to_flat_state(nnx.state(student_lib.build(c, dim, c.seed))))
  restored = _flat_params(asr, asr_dir)
  started = _flat_params(c, warm_dir, step=1)
  for path, value in started.items():
    source = fresh if path[0].startswith("pool_") else restored
    np.testing.assert_array_equal(value[...], source[path][...], err_msg=str(path))
  # Zero-initialised biases that ASR never trains (the pool_ ones) are equal either way.
  differ = {p for p in started if not np.array_equal(fresh[p][...], restored[p][...])}
  assert {("pool_out", "kernel"), ("frontend", "kernel"), ("ctc_head", "bias")} <= differ

  # The workdir's own checkpoint wins: `init_from` (here a missing folder) is not read.
  first = _history(warm_dir)["train"]
  c.init_from, c.train.steps = str(tmp_path / "missing"), 2
  assert train.train_and_evaluate(c, warm_dir)["steps"] == 2
  history = _history(warm_dir)["train"]
  assert [h["step"] for h in history] == [1, 2] and history[0] == first[0]  # Resumed at 1.


def test_mse_distillation_is_the_squared_error_to_centred_or_raw_targets(step_parts):
  """`loss.distill=mse` is the mean squared error to the teacher, centred per `centre_targets`."""
  c, graphdef, _, mean, state, batch = step_parts
  for centre in (True, False):
    cm = _with(c, loss__distill="mse", loss__centre_targets=centre)
    loss_fn = functools.partial(
      train_steps.loss_fn, graphdef=graphdef, config=cm, target_mean=mean, train=False
    )
    _, (parts, outputs) = jax.jit(loss_fn)(state["params"], batch, None)
    target = batch["teacher"] - (mean if centre else 0.0)
    expected = np.mean((np.asarray(outputs["embedding"]) - target) ** 2)
    np.testing.assert_allclose(parts["distill"], expected, rtol=1e-5)


DRIVER = """
import json, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import jax
from stalign import train
import testdata
c = testdata.tiny_config({data!r})
c.data.manifests = {manifests!r}
c.train.steps, c.train.log_every = 6, 1
c.train.checkpoint_every = 100
train.train_and_evaluate(c, {workdir!r})
print(jax.device_count(), jax.process_count())
"""


def _driver(config, workdir):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return DRIVER.format(
    repo=repo,
    tests=os.path.join(repo, "tests"),
    data=config.data_dir,
    workdir=workdir,
    manifests=dict(config.data.manifests),
  )


@pytest.mark.slow
def test_eight_devices_match_one_device(prepared_config, tmp_path):
  runs = {}
  for devices in (1, 8):
    workdir = str(tmp_path / f"d{devices}")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run(
      [sys.executable, "-c", _driver(prepared_config, workdir)],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == f"{devices} 1"
    runs[devices] = [h["loss"] for h in _history(workdir)["train"]]
  np.testing.assert_allclose(runs[1], runs[8], rtol=2e-4)


def test_evaluators_run_during_training_and_reach_tensorboard(prepared_config, tmp_path):
  import glob

  import tensorflow as tf

  c = prepared_config.copy_and_resolve_references()
  c.train.steps, c.eval.every_steps, c.eval.during_training = 6, 3, ("retrieval",)
  train.train_and_evaluate(c, str(tmp_path / "run"))
  tags = {}
  for path in glob.glob(str(tmp_path / "run" / "tensorboard" / "*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  assert tags["valid/retrieval.speech_to_text.recall_at_1"] == [3, 6]
  # The same figures in train_history.json, for readers without TensorBoard (the study's curves).
  evaluated = _history(str(tmp_path / "run"))["evaluators"]
  assert [e["step"] for e in evaluated] == [3, 6]
  assert set(evaluated[0]) - {"step"} == {t for t in tags if t.startswith("valid/retrieval.")}


def test_evaluators_in_training_match_the_evaluation_driver_on_the_same_params(step_parts):
  """Training's own reader and eval step, through `evaluators.split`, give the figures that
  `evaluate` gives with an `api.Model` of the same params (batches grouped otherwise: rounding)."""
  c, graphdef, _, mean, state, _ = step_parts
  c = _with(c, eval__during_training=("retrieval", "geometry"))
  jit_eval = jax.jit(
    functools.partial(train_steps.eval_step, graphdef=graphdef, config=c, target_mean=mean)
  )
  dim = mean.shape[-1]
  got = train_validation.run_evaluators(
    jit_eval, state["params"], c, sharding.make_mesh(c.mesh), dim, mean
  )
  emb = evaluate.embed_split(api.Model(c, graphdef, state["params"], mean), "valid")
  results = {name: evaluators.get(name)(emb) for name in c.eval.during_training}
  want = {f"valid/{k}": v for k, v in utils.flatten_dict(results).items()}
  assert set(got) == {k for k, v in want.items() if isinstance(v, (int, float))}
  for key, value in got.items():
    np.testing.assert_allclose(value, want[key], rtol=1e-4, atol=1e-5, err_msg=key)
