"""launch/tpu_vm.sh against a fake `gcloud`: the whole lifecycle, one preemption, and --dry-run.

The fake stands first on PATH, records every call, and plays a slice: a
queued resource that waits once before it is ACTIVE, a first job during which
the slice is preempted (the ssh session drops and the node reports PREEMPTED),
and a second job that writes the final checkpoint. It refuses commands it does
not know, so a mistyped gcloud command fails the test.
"""

import json
import os
import shlex
import subprocess
import sys

import pytest

from configs import tpu_multitask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "tpu_vm.sh")
CONFIG = "configs/tpu_multitask.py:runlocal"
WORKDIR = "gs://bucket/runs/multitask"
# The final step comes from the config and its overrides (runlocal says 6).
FINAL = f"{WORKDIR}/checkpoints/7/commit_success.txt"

FAKE_GCLOUD = r"""#!{python}
import json, os, sys, tarfile

root = os.environ["FAKE_GCLOUD_DIR"]
args = sys.argv[1:]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
  f.write(json.dumps(args) + "\n")
if os.environ.get("FAKE_GCLOUD_FORBID"):
  sys.exit("gcloud must not run")


def path(name):
  return os.path.join(root, name)


def read(name, default=None):
  return open(path(name)).read() if os.path.exists(path(name)) else default


def write(name, value):
  with open(path(name), "w") as f:
    f.write(str(value))


def flag(name):
  return next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), None) or (
    args[args.index(name) + 1] if name in args else None
  )


group, verb = args[2:4] if args[:2] == ["compute", "tpus"] else (args[0], args[1])
if group == "queued-resources" and verb == "create":
  assert "--spot" in args and flag("--node-id") == args[4] and flag("--runtime-version"), args
  write("node", "READY")
  write("qr_polls", 0)
elif group == "queued-resources" and verb == "describe":
  polls = int(read("qr_polls", 0))
  write("qr_polls", polls + 1)
  # Capacity comes on the 2nd query, unless the test says what the queue ends in.
  print("WAITING_FOR_RESOURCES" if polls == 0 else os.environ.get("FAKE_GCLOUD_QR", "ACTIVE"))
elif group == "queued-resources" and verb == "delete":
  assert "--force" in args and "--quiet" in args, args
  os.remove(path("node"))
elif group == "tpu-vm" and verb == "create":
  assert "--spot" not in args and flag("--version") and flag("--accelerator-type"), args
  write("node", "READY")
elif group == "tpu-vm" and verb == "delete":
  os.remove(path("node"))
elif group == "tpu-vm" and verb == "describe":
  if read("node") is None:
    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND")
  print(read("node"))
elif group == "tpu-vm" and verb == "scp":
  assert read("node") == "READY" and flag("--worker") == "all", args
  with tarfile.open(args[4]) as tar:
    write("copied", json.dumps(tar.getnames()))
elif group == "tpu-vm" and verb == "ssh":
  assert read("node") == "READY" and flag("--worker") == "all", args
  if "stalign.main" in flag("--command"):
    if os.environ.get("FAKE_GCLOUD_JOB_EXIT"):
      sys.exit(int(os.environ["FAKE_GCLOUD_JOB_EXIT"]))  # The job fails; the slice is fine.
    runs = int(read("runs", 0)) + 1
    write("runs", runs)
    print(f"train: step {{3 * runs}} of 7")
    if runs == 1 or os.environ.get("FAKE_GCLOUD_ALWAYS_PREEMPT"):
      write("node", "PREEMPTED")  # The slice is taken away mid-run; the session drops.
      sys.exit(255)
    write("final", "1")
elif args[:2] == ["storage", "ls"]:
  if not read("final"):
    sys.exit("ERROR: (gcloud.storage.ls) One or more URLs matched no objects.")
  print(args[2])
else:
  sys.exit(f"fake gcloud: unexpected command {{args}}")
"""


def _launch(tmp_path, *args, **env):
  fake = tmp_path / "bin"
  fake.mkdir(exist_ok=True)
  (fake / "gcloud").write_text(FAKE_GCLOUD.format(python=sys.executable))
  (fake / "gcloud").chmod(0o755)
  state = tmp_path / "gcloud_state"
  state.mkdir(exist_ok=True)
  out = subprocess.run(
    [SCRIPT, *args],
    env=dict(
      os.environ,
      PATH=f"{fake}:{os.environ['PATH']}",
      FAKE_GCLOUD_DIR=str(state),
      STALIGN_POLL_S="0",
      STALIGN_PYTHON=sys.executable,
      TMPDIR=str(tmp_path),
      **env,
    ),
    capture_output=True,
    text=True,
    timeout=120,
  )
  calls_file = state / "calls.jsonl"
  calls = [json.loads(line) for line in open(calls_file)] if calls_file.exists() else []
  return out, calls, state


def _step(call: list[str]) -> str:
  """One recorded gcloud call as a lifecycle step."""
  if call[:2] == ["storage", "ls"]:
    return "final checkpoint?"
  group, verb = call[2:4]
  if verb == "ssh":
    command = call[call.index("--command") + 1]
    return "start" if "stalign.main" in command else "install"
  return {
    ("tpu-vm", "describe"): "state?",
    ("queued-resources", "create"): "create",
    ("queued-resources", "describe"): "wait",
    ("queued-resources", "delete"): "delete",
    ("tpu-vm", "create"): "create",
    ("tpu-vm", "delete"): "delete",
    ("tpu-vm", "scp"): "copy",
  }[(group, verb)]


ONE_PASS = ["create", "wait", "wait", "copy", "install", "start", "final checkpoint?"]


def test_lifecycle_recreates_after_one_preemption_and_tears_down(tmp_path):
  out, calls, state = _launch(
    tmp_path,
    "stalign-test",
    "us-central2-b",
    "v4-32",
    CONFIG,
    WORKDIR,
    "--config.train.steps=7",
    "--config.data_dir=gs://bucket/data/libri speech",  # A space survives the remote shell.
  )
  assert out.returncode == 0, out.stderr
  steps = [_step(c) for c in calls]
  assert steps == [
    "state?",  # Nothing there yet.
    *ONE_PASS,  # Preempted during the job: no final checkpoint...
    "state?",  # ...and the node says PREEMPTED.
    "delete",
    *ONE_PASS,  # The final checkpoint exists after the second job.
    "delete",  # Teardown.
  ], steps
  assert "PREEMPTED" in out.stderr and "run is complete" in out.stderr
  # The workers' output is streamed to the terminal, from both jobs.
  assert "train: step 3 of 7" in out.stdout and "train: step 6 of 7" in out.stdout
  # Started on every worker with the config, the workdir and the overrides, quoted for the
  # remote shell; resumes from the same workdir.
  starts = [c[c.index("--command") + 1] for c in calls if _step(c) == "start"]
  assert len(starts) == 2 and starts[0] == starts[1]
  words = shlex.split(starts[0])
  for word in (
    f"--config={CONFIG}",
    f"--workdir={WORKDIR}",
    "--stages=train,evaluate",
    "--config.train.steps=7",
    "--config.data_dir=gs://bucket/data/libri speech",
  ):
    assert word in words, (word, words)
  assert all(c[c.index("--zone") + 1] == "us-central2-b" for c in calls if c[0] == "compute")
  # The pinned versions plus jax[tpu] on every worker; the code and configs, not data or venv.
  install = next(c[c.index("--command") + 1] for c in calls if _step(c) == "install")
  assert "-c requirements.lock" in install and '"jax[tpu]"' in install
  copied = json.loads((state / "copied").read_text())
  assert {"./configs/tpu_multitask.py", "./stalign/data/sources.py", "./launch/tpu_vm.sh"} <= set(
    copied
  )
  assert not any(n.startswith(("./.venv", "./data/", "./runs/", "./.git/")) for n in copied)
  assert [c for c in calls if c[:2] == ["storage", "ls"]][-1] == ["storage", "ls", FINAL]


def test_a_failing_job_on_a_live_slice_is_not_restarted_and_the_slice_is_deleted(tmp_path):
  """An error in the job (not a preemption) would repeat on every rerun: stop with its status."""
  (tmp_path / "gcloud_state").mkdir()
  (tmp_path / "gcloud_state" / "node").write_text("READY")  # An existing slice is reused.
  out, calls, _ = _launch(
    tmp_path, "stalign-test", "us-central2-b", "v4-32", CONFIG, WORKDIR, FAKE_GCLOUD_JOB_EXIT="3"
  )
  assert out.returncode == 3, out.stderr
  assert [_step(c) for c in calls] == [
    "state?",
    "copy",
    "install",
    "start",
    "final checkpoint?",
    "state?",
    "delete",
  ]
  assert "not restarting" in out.stderr
  # runlocal's own train.steps when no override names it.
  assert [c for c in calls if c[:2] == ["storage", "ls"]] == [
    ["storage", "ls", f"{WORKDIR}/checkpoints/6/commit_success.txt"]
  ]


def test_data_stage_alone_is_done_when_its_job_succeeds(tmp_path):
  """Building the TFRecords (--stages=data, on a single-host slice) has no final checkpoint."""
  (tmp_path / "gcloud_state").mkdir()
  (tmp_path / "gcloud_state" / "runs").write_text("1")  # This job is not preempted.
  out, calls, _ = _launch(
    tmp_path, "stalign-data", "us-central2-b", "v4-8", CONFIG, WORKDIR, "--stages=data"
  )
  assert out.returncode == 0, out.stderr
  steps = [_step(c) for c in calls]
  assert steps == ["state?", "create", "wait", "wait", "copy", "install", "start", "delete"]
  start = next(c[c.index("--command") + 1] for c in calls if _step(c) == "start")
  words = shlex.split(start)  # absl keeps the last --stages: the user's.
  assert words.index("--stages=data") > words.index("--stages=train,evaluate")


def test_dry_run_prints_a_whole_lifecycle_and_calls_no_gcloud(tmp_path):
  out, calls, _ = _launch(
    tmp_path,
    "--dry-run",
    "stalign-v4",
    "us-central2-b",
    "v4-32",
    "configs/tpu_multitask.py",
    "gs://bucket/runs/tpu_multitask",
    FAKE_GCLOUD_FORBID="1",
  )
  assert out.returncode == 0, out.stderr
  assert calls == []
  # One command a line (the install script as $'...'); the words up to the verb are plain.
  printed = [line.split() for line in out.stdout.splitlines() if line.startswith("gcloud")]
  steps = [
    ("start" if "stalign.main" in " ".join(c) else "install") if c[4:5] == ["ssh"] else _step(c[1:])
    for c in printed
  ]
  assert steps == [
    "state?",
    "create",
    "wait",
    "copy",
    "install",
    "start",
    "final checkpoint?",
    "state?",
    "delete",
    "create",
    "wait",
    "copy",
    "install",
    "start",
    "final checkpoint?",
    "delete",
  ]
  # The full config's final step, and the tarball command shown (not run).
  steps = tpu_multitask.get_config().train.steps
  assert f"gs://bucket/runs/tpu_multitask/checkpoints/{steps}/commit_success.txt" in out.stdout
  assert "# tar -C" in out.stdout and not list(tmp_path.glob("*.tgz"))


def test_dry_run_on_demand_creates_and_deletes_a_tpu_vm(tmp_path):
  out, calls, _ = _launch(
    tmp_path,
    "--dry-run",
    "--on-demand",
    "stalign-v5e",
    "us-west4-a",
    "v5litepod-16",
    "configs/tpu_multitask.py",
    "gs://bucket/runs/x",
    FAKE_GCLOUD_FORBID="1",
  )
  assert out.returncode == 0, out.stderr
  creates = [line for line in out.stdout.splitlines() if " create " in line]
  assert len(creates) == 2 and all("tpu-vm create" in line for line in creates)
  assert "--version v2-alpha-tpuv5-lite" in creates[0]
  assert "queued-resources" not in out.stdout


@pytest.mark.parametrize("args", [(), ("a", "b", "c", "d"), ("--bogus", "a", "b", "c", "d", "e")])
def test_usage_errors_print_the_usage(tmp_path, args):
  out, calls, _ = _launch(tmp_path, *args, FAKE_GCLOUD_FORBID="1")
  assert out.returncode == 2 and "tpu_vm.sh" in out.stderr and calls == []


def _launch_preempted(tmp_path, *options, **env):
  """A run of the lifecycle test's shape (final step given, so no config is read)."""
  args = (*options, "stalign-test", "us-central2-b", "v4-32", CONFIG, WORKDIR)
  return _launch(tmp_path, *args, STALIGN_STEPS="7", **env)


def test_gives_up_after_max_restarts_naming_the_limit_and_deletes_the_slice(tmp_path):
  out, calls, state = _launch_preempted(
    tmp_path, STALIGN_MAX_RESTARTS="1", FAKE_GCLOUD_ALWAYS_PREEMPT="1"
  )
  assert out.returncode == 1, out.stderr
  steps = [_step(c) for c in calls]
  assert steps == ["state?", *ONE_PASS, "state?", "delete", *ONE_PASS, "delete"], steps
  assert f"gave up after 1 restarts (STALIGN_MAX_RESTARTS) without {FINAL}" in out.stderr
  assert "rerun this command to resume" in out.stderr and not (state / "node").exists()


def test_keep_leaves_the_slice_up_and_says_how_to_delete_it(tmp_path):
  (tmp_path / "gcloud_state").mkdir()
  (tmp_path / "gcloud_state" / "runs").write_text("1")  # This job is not preempted.
  out, calls, state = _launch_preempted(tmp_path, STALIGN_KEEP="1")
  assert out.returncode == 0, out.stderr
  assert [_step(c) for c in calls] == ["state?", *ONE_PASS]
  assert (state / "node").read_text() == "READY"
  assert (
    "gcloud compute tpus queued-resources delete stalign-test --zone us-central2-b --force"
    in out.stderr
  )


@pytest.mark.parametrize("queue", ["FAILED", "SUSPENDED"])
def test_a_queued_resource_that_fails_stops_the_run_and_says_what_to_try(tmp_path, queue):
  out, calls, _ = _launch_preempted(tmp_path, FAKE_GCLOUD_QR=queue)
  assert out.returncode == 1, out.stderr
  assert [_step(c) for c in calls] == ["state?", "create", "wait", "wait", "delete"]
  assert f"queued resource stalign-test is {queue}" in out.stderr
  assert "another zone, or with --on-demand" in out.stderr


def test_a_slice_in_an_unexpected_state_is_replaced_before_the_run(tmp_path):
  (tmp_path / "gcloud_state").mkdir()
  (tmp_path / "gcloud_state" / "node").write_text("STOPPED")
  (tmp_path / "gcloud_state" / "runs").write_text("1")
  out, calls, _ = _launch_preempted(tmp_path)
  assert out.returncode == 0, out.stderr
  assert [_step(c) for c in calls] == ["state?", "delete", *ONE_PASS, "delete"]


def test_unreadable_train_steps_stops_before_any_gcloud_naming_config_and_fix(tmp_path):
  out, calls, _ = _launch(
    tmp_path, "n", "z", "v4-8", "configs/nope.py", WORKDIR, FAKE_GCLOUD_FORBID="1"
  )
  assert out.returncode == 2 and calls == []
  assert "could not read train.steps of configs/nope.py" in out.stderr
  assert "set STALIGN_STEPS" in out.stderr


def test_on_demand_recreates_a_preempted_tpu_vm_without_queued_resources(tmp_path):
  out, calls, _ = _launch_preempted(tmp_path, "--on-demand")
  assert out.returncode == 0, out.stderr
  steps = [_step(c) for c in calls]
  one_pass = ["create", "copy", "install", "start", "final checkpoint?"]
  assert steps == ["state?", *one_pass, "state?", "delete", *one_pass, "delete"], steps
  assert not [c for c in calls if "queued-resources" in c]
