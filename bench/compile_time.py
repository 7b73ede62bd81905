"""Seconds to compile the train step: every bucket shape with a cold and a warm persistent
cache, and the blocks unrolled vs scanned.

Compilation is paid inside a run's budget once per bucket shape. `make demo`
keeps a persistent compilation cache (`--compilation_cache`), so a second run
loads the executables instead of compiling them: `buckets` compiles all of
the demo's bucket shapes in a fresh process with an empty cache (a first run),
then again in another fresh process with that cache (a rerun). Every entry is
cached, however small or fast to compile.

With `model.scan_blocks` the block is compiled once and scanned over depth,
so the cost stops growing with depth: `depths` compiles both variants
alternately in one fresh process with the persistent cache off, side by side
(not part of `make bench`: see `run`).
Nothing needs data: the step is compiled from shapes.
"""

import os
import shutil
import tempfile
from typing import Any

import jax
import ml_collections

from bench import _common
from bench import _worker
from configs import demo
from stalign.data import features


def cache_env(cache_dir: str) -> dict[str, str]:
  """Environment of a process whose persistent cache is `cache_dir` and keeps every entry."""
  return {
    "JAX_COMPILATION_CACHE_DIR": cache_dir,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
  }


def buckets(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Compile seconds of every bucket shape, cold cache then warm, each in a fresh process.

  The warm cache is then merged into this process's persistent cache, if it
  has one (`bench.run` sets one), so later benchmarks load these shapes.
  """
  lengths = list(features.bucket_lengths(config))
  spec = {
    "task": "compile",
    "items": [{"config": config.to_json(), "frames": length} for length in lengths],
  }
  with tempfile.TemporaryDirectory() as cache:
    [cold] = _worker.run_workers([spec], cache_env(cache))
    [warm] = _worker.run_workers([spec], cache_env(cache))
    entries = len(os.listdir(cache))
    shared = jax.config.jax_compilation_cache_dir
    if shared:
      shutil.copytree(cache, shared, dirs_exist_ok=True)
  cold_s, warm_s = cold["compile_seconds"], warm["compile_seconds"]
  return {
    "bucket_lengths": lengths,
    "batch": config.input.batch_size,
    "cold_seconds": dict(zip(map(str, lengths), cold_s)),
    "warm_seconds": dict(zip(map(str, lengths), warm_s)),
    "cold_total_s": sum(cold_s),
    "warm_total_s": sum(warm_s),
    "cache_entries": entries,
    "warm_over_cold": sum(warm_s) / sum(cold_s),
  }


def depths(
  config: ml_collections.ConfigDict, frames: int, depth_list: tuple[int, ...], repeats: int
) -> dict[str, Any]:
  """Compile seconds at each depth, unrolled and scanned alternately, in one fresh process with
  the persistent cache off."""
  variants = {}
  for depth in depth_list:
    for name, scan in (("unrolled", False), ("scanned", True)):
      c = config.copy_and_resolve_references()
      c.model.depth, c.model.scan_blocks = depth, scan
      variants[(depth, name)] = c.to_json()
  order = [
    key
    for depth in depth_list
    for key in _common.abba([(depth, "unrolled"), (depth, "scanned")], repeats)
  ]
  spec = {"task": "compile", "items": [{"config": variants[k], "frames": frames} for k in order]}
  [result] = _worker.run_workers([spec], {"JAX_ENABLE_COMPILATION_CACHE": "false"})
  out = {}
  for depth in depth_list:
    seconds = {
      name: [s for k, s in zip(order, result["compile_seconds"]) if k == (depth, name)]
      for name in ("unrolled", "scanned")
    }
    medians = {k: _common.median(v) for k, v in seconds.items()}
    out[str(depth)] = {
      "compile_seconds": seconds,
      "median_seconds": medians,
      "scanned_over_unrolled": medians["scanned"] / medians["unrolled"],
    }
  return out


def run(
  config: ml_collections.ConfigDict | None = None,
  frames: int | None = None,
  depth_list: tuple[int, ...] = (),
  repeats: int = 1,
) -> dict[str, Any]:
  """Cold vs warm compile of the config's (default: the demo's) buckets; unrolled vs scanned
  at each depth of `depth_list`.

  None by default, to keep `make bench` within its budget (depth 12 costs
  about 75 s): `compile_time.run(depth_list=(12,))` measures where scanning
  pays (the TPU configs have 17 blocks). The demo's own depth is in
  `buckets`, unrolled as the demo runs it.
  """
  config = config or demo.get_config()
  frames = frames or _common.median_bucket(config)
  out = {
    "buckets": buckets(config),
    "frames": frames,
    "depths": depths(config, frames, depth_list, repeats) if depth_list else {},
  }
  b = out["buckets"]
  out["ratios"] = [
    _common.ratio(
      f"{len(b['bucket_lengths'])} buckets: warm / cold cache",
      b["warm_over_cold"],
      ("warm s", b["warm_total_s"]),
      ("cold s", b["cold_total_s"]),
      "warm: tracing and lowering (never cached) plus loading each executable",
    )
  ]
  for depth, d in out["depths"].items():
    out["ratios"].append(
      _common.ratio(
        f"depth {depth}: scanned / unrolled",
        d["scanned_over_unrolled"],
        ("scanned s", d["median_seconds"]["scanned"]),
        ("unrolled s", d["median_seconds"]["unrolled"]),
        "scanned: one block body plus the loop; unrolled grows with depth",
      )
    )
  return out
