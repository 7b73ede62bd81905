"""The entry point as users call it: config errors, --help, and the whole pipeline end to end."""

import json
import os
import subprocess
import sys

import pytest

import testdata
from testdata import NETWORK_GUARD

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


def _one_line_error(out) -> str:
  """The single line a user error prints; fails on a traceback or more lines."""
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  [line] = out.stderr.strip().splitlines()
  return line


def test_missing_config_file_fails_with_its_name(tmp_path):
  # With an override, ml_collections reads the missing file inside absl's flag parsing.
  out = _main("--config=configs/nope.py:tiny", "--config.train.steps=3", f"--workdir={tmp_path}")
  line = _one_line_error(out)
  assert "configs/nope.py" in line and "configs/demo.py" in line


# The `--config` handling every CLI gets from `cli.run` (main, precompute, evaluate, study), run
# without any one CLI's imports: a config file that does not exist and a typo in `path.py:arg`
# both surface while absl parses flags, where they were tracebacks.
_CONFIG_CLI = """
from absl import flags
from ml_collections import config_flags
from stalign import cli
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
cli.run(lambda argv: print("steps", flags.FLAGS.config.train.steps))
"""


def _config_cli(*args):
  return subprocess.run(
    [sys.executable, "-c", _CONFIG_CLI, *args], cwd=REPO, capture_output=True, text=True
  )


@pytest.mark.parametrize(
  "args, words",
  [
    (
      ["--config=configs/nope.py", "--config.train.steps=3"],
      ["--config=configs/nope.py:", "no such config file", "configs/demo.py"],
    ),
    (["--config", "configs/nope.py:tiny"], ["--config=configs/nope.py:tiny:", "no such config"]),
    (
      ["--config=configs/demo.py:tyni", "--config.train.steps=3"],
      ["--config=configs/demo.py:tyni:", "unknown config arg 'tyni'", "['seed', 'tiny']"],
    ),
    (["--config=configs/demo.py:tiny,seed=x"], ["seed='x' is not int"]),
    (
      ["--config=configs/demo.py:tiny", "--config.train.stepz=3"],
      ["--config.train.stepz:", "no such key", 'Did you mean "steps"', "configs/demo.py"],
    ),
    (
      ["--config=configs/demo.py:tiny", "--config.trainn.steps=3"],
      ["--config.trainn.steps:", "no such key", 'Did you mean "train"'],
    ),
  ],
)
def test_cli_refuses_a_bad_config_argument_in_one_line(args, words):
  line = _one_line_error(_config_cli(*args))
  for word in words:
    assert word in line, line


def test_cli_keeps_good_configs_and_absl_flag_errors():
  good = _config_cli("--config=configs/demo.py:tiny,seed=3", "--config.train.steps=7")
  assert good.returncode == 0 and good.stdout == "steps 7\n", good.stderr[-3000:]
  bad = _config_cli("--config=configs/demo.py:tiny", "--bogus")
  assert bad.returncode == 1, bad.stderr[-3000:]
  assert bad.stderr.splitlines() == [
    "FATAL Flags parsing error: Unknown command line flag 'bogus'",
    "Pass --helpshort or --helpfull to see help on flags.",
  ]


def test_every_cli_with_a_config_flag_runs_through_cli_run():
  """The `--config` checks above live in `cli.run`: a CLI calling `app.run` itself loses them."""
  import glob

  for path in glob.glob(os.path.join(REPO, "stalign", "*.py")):
    source = open(path).read()
    if ("DEFINE_config_file" in source or "cli.define_run_flags(" in source) and not path.endswith(
      "cli.py"
    ):
      assert "cli.run(" in source and "app.run(" not in source, path


_TENSORFLOW_LOADS = """
import importlib, importlib.abc, json, os, sys

class TensorFlowLoads(Exception):
  pass

class Stop(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name == "tensorflow":  # Stop it loading, with what it would read as it loads.
      raise TensorFlowLoads(os.environ.get("TF_ENABLE_ONEDNN_OPTS"))

sys.meta_path.insert(0, Stop())
seen = {}
for module in sys.argv[1:]:
  os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
  for name in [n for n in sys.modules if n == "stalign" or n.startswith("stalign.")]:
    del sys.modules[name]
  try:
    importlib.import_module(module)
    seen[module] = "no TensorFlow"
  except TensorFlowLoads as e:
    seen[module] = f"TF_ENABLE_ONEDNN_OPTS={e}"
print(json.dumps(seen))
"""


def test_every_cli_sets_tensorflows_environment_before_it_loads():
  """`stalign.cli`'s bootstrap holds only where a command imports it before TensorFlow loads.

  One process imports each command in turn (not as `__main__`, so only the bootstrap can set
  the variable) and stops TensorFlow from loading, noting what it would have read.
  """
  import glob

  commands = [
    f"stalign.{os.path.basename(path)[: -len('.py')]}"
    for path in sorted(glob.glob(os.path.join(REPO, "stalign", "*.py")))
    if "cli.run(" in open(path).read() and not path.endswith("cli.py")
  ]
  env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
  out = subprocess.run(
    [sys.executable, "-c", _TENSORFLOW_LOADS, *commands],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  seen = json.loads(out.stdout.splitlines()[-1])
  assert seen["stalign.main"] != "no TensorFlow"  # The check sees what it should.
  assert all(v in ("no TensorFlow", "TF_ENABLE_ONEDNN_OPTS=0") for v in seen.values()), seen


def test_unknown_stage_fails_before_anything_is_written(tmp_path):
  out = _main("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--stages=data,trian")
  line = _one_line_error(out)
  assert "['trian']" in line and "--stages" in line and "data, train, evaluate" in line
  assert not os.path.exists(tmp_path / "config.json")


def test_positional_arguments_are_refused_naming_them():
  from absl import app

  from stalign import main as main_lib

  with pytest.raises(app.UsageError, match=r"\['steps=3'\]; settings go in --config.KEY=VALUE"):
    main_lib._check_flags(["stalign.main", "steps=3"])


def test_help_explains_the_flags():
  out = _main("--helpshort")  # absl exits 1 after printing help.
  assert "python -m stalign.main --config=configs/demo.py" in out.stdout
  for flag in ("--config", "--workdir", "--stages"):
    assert flag in out.stdout


def _offline_main(tmp_path, *args, timeout=600):
  """`python -m stalign.main` with the network refused (and in its own network namespace when the
  machine allows one, so even non-Python code cannot reach out)."""
  guard = tmp_path / "netguard"
  guard.mkdir(exist_ok=True)
  (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
  env = dict(
    os.environ,
    PYTHONPATH=f"{guard}:{os.environ.get('PYTHONPATH', '')}",
    STALIGN_NET_LOG=str(tmp_path / "network_attempts.log"),
  )
  command = [sys.executable, "-m", "stalign.main", *args]
  if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
    command = ["unshare", "-rn", *command]
  out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert not os.path.exists(env["STALIGN_NET_LOG"]), open(env["STALIGN_NET_LOG"]).read()
  return out


@pytest.mark.slow
def test_end_to_end_tiny_demo_offline_learns_reports_and_reruns_without_rework(tmp_path):
  """The real entry point on the synthetic corpus at the tiny size, with the network refused."""
  testdata.real_speech_dir("fsdd")  # Its zero-shot section reads FSDD's digits.
  data, workdir = tmp_path / "data", tmp_path / "run"
  # 200 steps: the tiny model's retrieval leaves chance clearly only after ~150 (measured).
  args = (
    "--config=configs/demo.py:tiny",
    f"--workdir={workdir}",
    f"--config.data_dir={data}",
    "--config.train.steps=200",
    "--config.train.lr=3e-3",
    "--config.eval.every_steps=0",
  )
  out = _offline_main(tmp_path, *args)
  assert out.returncode == 0, out.stderr[-3000:]
  for stage in ("data: train", "train: step 200 of 200", "speech to text R@1"):
    assert stage in out.stdout, out.stdout
  history = json.load(open(workdir / "train_history.json"))
  losses = [h["loss"] for h in history["train"]]
  assert losses[-1] < 0.9 * losses[0], losses
  assert [v["step"] for v in history["valid"]] == list(range(20, 201, 20))
  report = json.load(open(workdir / "report.json"))
  for section in ("retrieval", "geometry", "probing"):
    assert section in report, section
  assert set(report["zero_shot"]) == {"synthetic", "fsdd"} and "skipped" not in report
  s2t = report["retrieval"]["speech_to_text"]
  chance_r10, chance_median = 10 / s2t["gallery"], (s2t["gallery"] + 1) / 2
  assert s2t["gallery"] == 60 and s2t["recall_at_10"] > 2 * chance_r10, s2t
  assert s2t["median_rank"] < 0.6 * chance_median, s2t
  assert report["retrieval"]["paired_cosine"] > report["retrieval"]["unpaired_cosine"] + 0.03
  assert report["zero_shot"]["fsdd"]["utterances"] == 2000

  # Rerunning reuses everything: no data file rewritten, training already complete.
  data_files, checkpoints = testdata.mtimes(data), testdata.mtimes(workdir / "checkpoints")
  again = _offline_main(tmp_path, *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (
    testdata.mtimes(data) == data_files and testdata.mtimes(workdir / "checkpoints") == checkpoints
  )
  assert "train: step 200 of 200" in again.stdout

  # A missing FSDD folder is a reported skip, not a silently dropped section.
  missing = _offline_main(
    tmp_path, *args, "--stages=evaluate", f"--config.data.fsdd_dir={tmp_path / 'nope'}"
  )
  assert missing.returncode == 0, missing.stderr[-3000:]
  report = json.load(open(workdir / "report.json"))
  assert "fsdd" not in report["zero_shot"] and "nope" in report["skipped"]["zero_shot.fsdd"]
  assert "zero_shot.fsdd skipped" in missing.stdout


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(prepared_config, tmp_path):
  """`stalign.main` as users launch it on two hosts (jax.distributed on localhost, one device
  each) trains the same model as one process with two devices and the same global batch, and its
  evaluators during training (every process embeds its rows of the valid split) agree."""
  import numpy as np

  import stalign

  config_file = testdata.write_config(
    tmp_path / "two_process_config.py",
    prepared_config.data_dir,
    prepared_config.data.manifests,
    **testdata.SAME_BATCH_ANY_PROCESS_COUNT,
    train__steps=6,
    train__log_every=1,
    train__checkpoint_every=3,
    eval__every_steps=3,
  )
  args = [f"--config={config_file}", "--stages=train"]

  one = tmp_path / "one"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run(
    [sys.executable, "-m", "stalign.main", *args, f"--workdir={one}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert out.returncode == 0, out.stderr[-3000:]

  two = tmp_path / "two"
  testdata.two_process_main([*args, f"--workdir={two}"], dict(os.environ), timeout=400)

  histories = [json.load(open(d / "train_history.json")) for d in (one, two)]
  losses = [[h["loss"] for h in hist["train"]] for hist in histories]
  assert len(losses[0]) == 6
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  valid = [[v["valid_loss"] for v in hist["valid"]] for hist in histories]
  np.testing.assert_allclose(valid[0], valid[1], rtol=1e-5)
  evaluated = [hist["evaluators"] for hist in histories]
  assert [e["step"] for e in evaluated[0]] == [e["step"] for e in evaluated[1]] == [3, 6]
  for ours, theirs in zip(*evaluated):
    assert ours.keys() == theirs.keys() and "valid/retrieval.speech_to_text.recall_at_1" in ours
    np.testing.assert_allclose(
      [ours[k] for k in sorted(ours)], [theirs[k] for k in sorted(ours)], rtol=1e-4, atol=1e-5
    )
  testdata.assert_same_params(
    *(testdata.flat_params(stalign.load(str(d), config=prepared_config).params) for d in (one, two))
  )


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


def test_make_skips_the_install_once_done():
  """`make demo` / `make test` reinstall only when setup.py or requirements.lock changed."""
  # Inside `make test` the environment says this is a recursive make; start a fresh one.
  env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
  out = subprocess.run(
    ["make", "--no-print-directory", "-n", "demo"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().splitlines() == [
    ".venv/bin/python -m stalign.main --config=configs/whisper.py --workdir=runs/demo"
  ]
