"""Train-step throughput on 1, 2, 4 and 8 simulated CPU devices, and in 1 vs 2 processes.

At a fixed global batch (the demo's), on one machine. Simulated devices
(`--xla_force_host_platform_device_count`) share the same cores, so this
measures the overhead of sharding the step (partitioned programs, collectives,
smaller per-device matmuls), not a speed-up: 1.0 means sharding costs nothing,
and on real chips the work would also divide. The same holds for the two
`jax.distributed` processes on localhost (one device each, half the batch
each, gradients summed over gloo collectives, as `stalign.main` runs them with
`--num_processes=2`), against one process with one device. Each configuration
runs in fresh processes (`_worker`), since the device count is fixed when JAX
starts; each is compiled, warmed up, then timed per step (median).
"""

import os
from typing import Any

import jax
import ml_collections

from bench import _common
from bench import _worker
from bench import compile_time
from configs import demo


def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  flags = os.environ.get("XLA_FLAGS", "")
  env = {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip()}
  if jax.config.jax_compilation_cache_dir:  # Shares the runner's cache (see bench/run.py).
    env.update(compile_time.cache_env(jax.config.jax_compilation_cache_dir))
  return env


def _summary(results: list[dict], config: ml_collections.ConfigDict, frames: int) -> dict:
  step_s = max(_common.median(r["step_seconds"]) for r in results)  # The slowest process.
  audio_s = config.input.batch_size * frames * config.features.hop_ms / 1000
  return {
    "devices": results[0]["devices"],
    "processes": results[0]["processes"],
    "compile_s": max(r["compile_s"] for r in results),
    "step_seconds": [r["step_seconds"] for r in results],
    "steps_per_s": 1 / step_s,
    "audio_seconds_per_s": audio_s / step_s,
  }


def run(
  config: ml_collections.ConfigDict | None = None,
  frames: int | None = None,
  devices: tuple[int, ...] = (1, 2, 4, 8),
  steps: int = 3,
) -> dict[str, Any]:
  """Steps/s per simulated device count, and with 2 processes, at one global batch."""
  config = config or demo.get_config()
  frames = frames or _common.median_bucket(config)
  spec = {"config": config.to_json(), "task": "steps", "frames": frames, "steps": steps}
  out = {
    "global_batch": config.input.batch_size,
    "frames": frames,
    "what": "sharding overhead on one machine's shared cores, not speed-up",
    "devices": {},
  }
  for n in devices:
    out["devices"][str(n)] = _summary(_worker.run_workers([spec], _env(n)), config, frames)
  coordinator = f"127.0.0.1:{_free_port()}"
  pair = [
    {**spec, "distributed": {"coordinator": coordinator, "num_processes": 2, "process_id": i}}
    for i in range(2)
  ]
  out["two_processes"] = _summary(_worker.run_workers(pair, _env(1)), config, frames)
  one = out["devices"][str(devices[0])]
  out["ratios"] = [
    _common.ratio(
      f"steps/s: {n} simulated devices / {devices[0]}",
      d["steps_per_s"] / one["steps_per_s"],
      (f"{n} devices steps/s", d["steps_per_s"]),
      (f"{devices[0]} device steps/s", one["steps_per_s"]),
      "same cores shared by every device: measures partitioning and collective overhead",
    )
    for n, d in out["devices"].items()
    if d is not one
  ]
  out["ratios"].append(
    _common.ratio(
      f"steps/s: 2 processes x 1 device / 1 process x {devices[0]}",
      out["two_processes"]["steps_per_s"] / one["steps_per_s"],
      ("2 processes steps/s", out["two_processes"]["steps_per_s"]),
      ("1 process steps/s", one["steps_per_s"]),
      "two XLA thread pools on the same cores, plus gloo all-reduces over localhost",
    )
  )
  return out
