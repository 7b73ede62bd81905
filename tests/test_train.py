import functools
import json
import os
import signal
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest

import stalign
from stalign import input_pipeline
from stalign import train
from stalign.data import layout
from stalign.models import student as student_lib


def _history(workdir):
  with open(os.path.join(workdir, "train_history.json")) as f:
    return json.load(f)


def _params(config, workdir):
  return jax.tree.leaves(stalign.load(workdir, config=config).params)


def _run(config, workdir, **overrides):
  c = config.copy_and_resolve_references()
  c.train.steps, c.train.log_every, c.train.lr = 30, 3, 3e-3
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  train.train_and_evaluate(c, workdir)
  return [h["loss"] for h in _history(workdir)["train"]]


def _assert_falls(name, losses):
  assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:2]), (name, losses)


@pytest.fixture(scope="module")
def step_parts(prepared_config):
  """Everything the step functions are bound to, and one real training batch."""
  c = prepared_config.copy_and_resolve_references()
  dim, mean = layout.read_teacher_stats(c.data_dir)
  batch = train.device_batch(next(input_pipeline.train_iterator(c, "train", dim)))
  tx = train.make_optimizer(c, train.make_schedule(c))
  graphdef, _ = nnx.split(student_lib.build(c, dim))
  return c, graphdef, tx, mean, train.init_state(c, tx, dim), batch


def test_train_step_alone_fits_one_batch_and_its_loss_is_the_weighted_sum(step_parts):
  c, graphdef, tx, mean, state, batch = step_parts
  step = jax.jit(
    functools.partial(train.train_step, graphdef=graphdef, tx=tx, config=c, target_mean=mean)
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
  loss = functools.partial(train.loss_fn, graphdef=graphdef, config=c, target_mean=mean)
  params = state["params"]
  eval_a, eval_b = (float(loss(params, batch, None, train=False)[0]) for _ in range(2))
  assert eval_a == eval_b
  key = jax.random.key
  train_0 = float(loss(params, batch, key(0), train=True)[0])
  assert train_0 == float(loss(params, batch, key(0), train=True)[0])
  assert train_0 != float(loss(params, batch, key(1), train=True)[0]) != eval_a


def test_eval_step_counts_real_rows_only(step_parts):
  c, graphdef, _, mean, state, batch = step_parts
  step = jax.jit(functools.partial(train.eval_step, graphdef=graphdef, config=c, target_mean=mean))
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


def test_accumulation_bf16_attention_pooling_and_spec_augment_train(prepared_config, tmp_path):
  losses = _run(
    prepared_config,
    str(tmp_path / "x"),
    train__grad_accumulation=2,
    train__compute_dtype="bfloat16",
    model__pooling="attention",
  )
  assert np.isfinite(losses).all()
  c = prepared_config.copy_and_resolve_references()
  c.train.spec_augment.freq_masks, c.train.spec_augment.time_masks = 2, 2
  _assert_falls("specaug", _run(c, str(tmp_path / "s")))


def test_sigterm_saves_and_resume_matches_uninterrupted(prepared_config, tmp_path, monkeypatch):
  c = prepared_config.copy_and_resolve_references()
  c.train.steps, c.train.checkpoint_every = 12, 100
  train.train_and_evaluate(c, str(tmp_path / "full"))

  real_iterator = input_pipeline.train_iterator

  def killed_after_5(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i == 5:
        os.kill(os.getpid(), signal.SIGTERM)  # What a preempted VM receives.
      yield batch

  monkeypatch.setattr(input_pipeline, "train_iterator", killed_after_5)
  summary = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert summary["preempted"] and summary["steps"] == 6
  monkeypatch.setattr(input_pipeline, "train_iterator", real_iterator)
  summary = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert summary["steps"] == 12 and not summary["preempted"]
  for a, b in zip(_params(c, str(tmp_path / "full")), _params(c, str(tmp_path / "resumed"))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nonfinite_updates_are_skipped_then_the_run_stops(prepared_config, tmp_path, monkeypatch):
  c = prepared_config.copy_and_resolve_references()
  c.train.steps, c.train.max_nonfinite_steps = 20, 3
  real_iterator = input_pipeline.train_iterator

  def poisoned(*args, **kwargs):
    for batch in real_iterator(*args, **kwargs):
      batch["features"] = batch["features"] * np.nan
      yield batch

  monkeypatch.setattr(input_pipeline, "train_iterator", poisoned)
  with pytest.raises(train.NonFiniteLossError, match="3 consecutive steps"):
    train.train_and_evaluate(c, str(tmp_path / "nan"))
  assert not os.path.exists(os.path.join(tmp_path, "nan", "checkpoints", "3"))


DRIVER = """
import json, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import jax
if {process_id} >= 0:
  jax.distributed.initialize("127.0.0.1:{port}", num_processes=2, process_id={process_id})
from stalign import train
import testdata
c = testdata.tiny_config({data!r})
c.data.manifests = {manifests!r}
c.train.steps, c.train.log_every = 6, 1
c.train.checkpoint_every = 100
train.train_and_evaluate(c, {workdir!r})
print(jax.device_count(), jax.process_count())
"""


def _driver(config, workdir, process_id=-1, port=0):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return DRIVER.format(
    repo=repo,
    tests=os.path.join(repo, "tests"),
    data=config.data_dir,
    workdir=workdir,
    manifests=dict(config.data.manifests),
    process_id=process_id,
    port=port,
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


@pytest.mark.slow
def test_two_processes_train_together(prepared_config, tmp_path):
  """Two CPU processes joined by jax.distributed on localhost: one mesh, one checkpoint."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / "two")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _driver(prepared_config, workdir, i, port)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == "2 2"
  losses = [h["loss"] for h in _history(workdir)["train"]]
  assert len(losses) == 6 and np.isfinite(losses).all()
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))


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
