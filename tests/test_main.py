"""The entry point as users call it: config errors, --help, and the whole pipeline end to end."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", "stalign.main", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_unknown_config_key_fails_at_once_naming_it(tmp_path):
  out = _main("--config=configs/demo.py:tiny", "--config.train.stepz=3", f"--workdir={tmp_path}")
  assert out.returncode != 0
  assert "stepz" in out.stderr
  assert not os.path.exists(tmp_path / "config.json")  # Nothing ran.


def test_mistyped_value_type_fails(tmp_path):
  out = _main("--config=configs/demo.py:tiny", "--config.train.steps=many", f"--workdir={tmp_path}")
  assert out.returncode != 0 and "steps" in out.stderr


def test_missing_config_file_fails_with_its_name(tmp_path):
  out = _main("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert out.returncode != 0 and "nope.py" in out.stderr


def test_help_explains_the_flags():
  out = _main("--helpshort")  # absl exits 1 after printing help.
  assert "python -m stalign.main --config=configs/demo.py" in out.stdout
  for flag in ("--config", "--workdir", "--stages"):
    assert flag in out.stdout


@pytest.mark.slow
def test_end_to_end_tiny_demo(tmp_path):
  """The real entry point on the synthetic corpus at the tiny size: every stage, then the report."""
  workdir = tmp_path / "run"
  out = _main(
    "--config=configs/demo.py:tiny",
    f"--workdir={workdir}",
    f"--config.data_dir={tmp_path / 'data'}",
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "speech to text R@1" in out.stdout
  report = json.load(open(workdir / "report.json"))
  s2t = report["retrieval"]["speech_to_text"]
  assert s2t["gallery"] >= 10 and 0.0 <= s2t["recall_at_1"] <= 1.0
  assert report["utterances"] > 0
  saved = json.load(open(workdir / "config.json"))
  assert saved["train"]["steps"] == 30
  # Rerunning resumes: data reused, training already finished, the report rewritten.
  again = _main(
    "--config=configs/demo.py:tiny",
    f"--workdir={workdir}",
    f"--config.data_dir={tmp_path / 'data'}",
    timeout=600,
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from this workdir's step 30" in again.stderr


@pytest.mark.parametrize(
  "name", ["demo", "distill", "asr_pretrain", "distill_from_asr", "multitask_from_asr"]
)
def test_every_regime_config_sets_its_losses(name):
  import importlib

  c = importlib.import_module(f"configs.{name}").get_config("tiny")
  weights = (c.loss.distill != "none", c.loss.ctc_weight > 0)
  expected = {
    "demo": (True, True),
    "distill": (True, False),
    "asr_pretrain": (False, True),
    "distill_from_asr": (True, False),
    "multitask_from_asr": (True, True),
  }[name]
  assert weights == expected
  assert bool(c.init_from) == name.endswith("_from_asr")
