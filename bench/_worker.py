"""One measurement in a fresh process: `python -m bench._worker SPEC_JSON_PATH`.

Some figures need a process of their own: a compile with a cold, a warm or
no persistent cache (nothing compiled in memory yet, as a new run starts; JAX
decides once per process whether it uses its cache), a number of simulated CPU
devices (fixed by XLA_FLAGS before JAX starts), or one
of several `jax.distributed` processes. The parent (`run_workers`) sets the
environment, writes the spec and reads back the one JSON line printed after
`RESULT `.

Spec: {"task": "compile", "items": [{"config": a ConfigDict as JSON, "frames":
length}, ...]} compiles each item's train step in order; {"task": "steps",
"config": ..., "frames": length, "steps": timed steps, "distributed": null or
{"coordinator", "num_processes", "process_id"}} times train steps.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "RESULT "


def _compile(items: list[dict]) -> dict[str, Any]:
  """Seconds to trace, lower and compile each item's step, in order (building it is not timed)."""
  import ml_collections

  from bench import _common

  steps, seconds = {}, []
  for item in items:
    if item["config"] not in steps:
      config = ml_collections.ConfigDict(json.loads(item["config"]))
      steps[item["config"]] = _common.TrainStep(config)
    start = time.perf_counter()
    steps[item["config"]].compile(item["frames"])
    seconds.append(time.perf_counter() - start)
  return {"compile_seconds": seconds}


def _steps(config_json: str, frames: int, steps: int) -> dict[str, Any]:
  """Seconds of each of `steps` train steps on this process's share of a global batch."""
  import jax
  import ml_collections

  from bench import _common

  config = ml_collections.ConfigDict(json.loads(config_json))
  step = _common.TrainStep(config)
  rows = config.input.batch_size // jax.process_count()
  local = _common.synthetic_batch(config, frames, rows, seed=jax.process_index())
  batch = step.device_batch(local)
  start = time.perf_counter()
  compiled = step.compile(frames)
  compile_s = time.perf_counter() - start
  state = step.init()
  state, metrics = compiled(state, batch)  # Warm-up.
  jax.block_until_ready(metrics)
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    seconds.append(time.perf_counter() - start)
  return {
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "compile_s": compile_s,
    "step_seconds": seconds,
  }


def main(spec_path: str) -> None:
  with open(spec_path) as f:
    spec = json.load(f)
  import jax

  if spec.get("distributed"):  # Before anything else starts JAX's backend.
    d = spec["distributed"]
    jax.distributed.initialize(d["coordinator"], d["num_processes"], d["process_id"])
  jax.devices()  # Starts the backend, so the first measurement does not pay for it.
  if spec["task"] == "compile":
    result = _compile(spec["items"])
  else:
    result = _steps(spec["config"], spec["frames"], spec["steps"])
  print(PREFIX + json.dumps(result), flush=True)


def run_workers(specs: list[dict], env: dict[str, str], timeout: float = 900) -> list[dict]:
  """Runs one worker per spec, all at once (they may wait on each other), and returns each
  result; a worker that fails raises with its stderr."""
  env = {**os.environ, "PYTHONPATH": REPO, **env}
  with tempfile.TemporaryDirectory() as tmp:
    procs = []
    for i, spec in enumerate(specs):
      path = os.path.join(tmp, f"spec{i}.json")
      with open(path, "w") as f:
        json.dump(spec, f)
      procs.append(
        subprocess.Popen(
          [sys.executable, "-m", "bench._worker", path],
          cwd=REPO,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
        )
      )
    outs = [p.communicate(timeout=timeout) for p in procs]
  results = []
  for p, (stdout, stderr) in zip(procs, outs):
    lines = [line for line in stdout.splitlines() if line.startswith(PREFIX)]
    if p.returncode or not lines:
      raise RuntimeError(f"bench worker exited with {p.returncode}:\n{stderr[-4000:]}")
    results.append(json.loads(lines[-1][len(PREFIX) :]))
  return results


if __name__ == "__main__":
  main(sys.argv[1])
