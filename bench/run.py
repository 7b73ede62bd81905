"""Runs every benchmark in bench/, writes bench/results/<name>.json, prints one table of ratios.

What `make bench` calls. A benchmark is a module here with a `run() -> dict`
function; its result may hold `ratios`, rows made by `_common.ratio`, which
go into the table. Name some on the command line to run only those:
`python -m bench.run teacher_throughput retrieval`.

Every result also records the machine and the benchmark's wall time. A
benchmark that fails is recorded as such (its traceback in its JSON) and the
others still run; the exit status is then 1. Benchmarks run in one process
sharing one persistent compilation cache, new for each run (so every run
starts alike): a train-step shape compiled by one benchmark is loaded by the
next (`compile_time` measures cold and warm compiles in folders of its own).
"""

import importlib
import json
import os
import pkgutil
import sys
import tempfile
import time
import traceback

import jax

from bench import _common

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def benchmarks() -> list[str]:
  """Every module of this package that defines `run`, except this runner."""
  names = [
    m.name
    for m in pkgutil.iter_modules([os.path.dirname(os.path.abspath(__file__))])
    if not m.name.startswith("_") and m.name != "run"
  ]
  return sorted(n for n in names if hasattr(importlib.import_module(f"bench.{n}"), "run"))


def run_one(name: str) -> dict:
  """One benchmark's result, with its wall time and the machine; a failure as its traceback."""
  start = time.perf_counter()
  try:
    result = importlib.import_module(f"bench.{name}").run()
  except Exception:  # noqa: BLE001 - recorded, and the run's exit status says so.
    result = {"error": traceback.format_exc()}
  result["wall_s"] = round(time.perf_counter() - start, 1)
  result["machine"] = _common.machine()
  return result


def _figure(x: float) -> str:
  return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def table(results: dict[str, dict]) -> str:
  """One line per ratio: benchmark, ratio, both raw figures, what limits it; then the others."""
  rows = [("benchmark", "ratio", "numerator", "denominator", "limited by")]
  notes = []
  for name, result in results.items():
    for r in result.get("ratios", []):
      rows.append(
        (
          f"{name}: {r['name']}",
          _figure(r["ratio"]),
          f"{r['numerator']['what']} {_figure(r['numerator']['value'])}",
          f"{r['denominator']['what']} {_figure(r['denominator']['value'])}",
          r["limit"],
        )
      )
    if "error" in result:
      notes.append(f"{name}: FAILED after {result['wall_s']} s (traceback in its JSON)")
    elif "skipped" in result:
      notes.append(f"{name}: skipped: {result['skipped']}")
    elif not result.get("ratios"):
      notes.append(f"{name}: no ratio (see its JSON)")
  widths = [max(len(row[i]) for row in rows) for i in range(4)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4] for row in rows]
  lines.insert(1, "-" * len(lines[0]))
  total = sum(r["wall_s"] for r in results.values())
  return "\n".join(lines + [""] + notes + [f"total wall time {total:.0f} s"])


def main(argv: list[str]) -> int:
  names = argv or benchmarks()
  os.makedirs(RESULTS, exist_ok=True)
  results = {}
  with tempfile.TemporaryDirectory(prefix="stalign-bench-jax-cache-") as cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    for name in names:
      print(f"{name} ...", flush=True)
      results[name] = run_one(name)
      path = os.path.join(RESULTS, f"{name}.json")
      with open(path, "w") as f:
        json.dump(results[name], f, indent=2)
      print(f"{name}: {results[name]['wall_s']} s, written to {path}", flush=True)
  print(table(results))
  return int(any("error" in r for r in results.values()))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
