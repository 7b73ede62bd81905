"""Runs every benchmark in bench/ and writes bench/results/<name>.json (what `make bench` calls).

A benchmark is a module here with a `run() -> dict` function. Name some on the
command line to run only those: `python -m bench.run teacher_throughput`.
"""

import importlib
import json
import os
import pkgutil
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def benchmarks() -> list[str]:
  """Every module of this package that defines `run`, except this runner."""
  names = [
    m.name
    for m in pkgutil.iter_modules([os.path.dirname(os.path.abspath(__file__))])
    if not m.name.startswith("_") and m.name != "run"
  ]
  return sorted(n for n in names if hasattr(importlib.import_module(f"bench.{n}"), "run"))


def main(argv: list[str]) -> None:
  names = argv or benchmarks()
  os.makedirs(RESULTS, exist_ok=True)
  for name in names:
    result = importlib.import_module(f"bench.{name}").run()
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
    print(f"{name}: {json.dumps(result, indent=2)}\nwritten to {path}")


if __name__ == "__main__":
  main(sys.argv[1:])
