"""The layering of docs/architecture.md holds in the code: imports point down, no cycles."""

import ast
import collections
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROW = re.compile(r"^\| (\d+) [^|]*\| `(stalign/[\w/]+\.py)` \|", re.M)


def _layers() -> dict[str, int]:
  """{module name: layer} from the table in docs/architecture.md."""
  with open(os.path.join(REPO, "docs", "architecture.md")) as f:
    rows = _ROW.findall(f.read())
  return {_module_name(path): int(layer) for layer, path in rows}


def _module_name(path: str) -> str:
  name = path[: -len(".py")].replace("/", ".")
  return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _package_modules() -> list[str]:
  out = []
  for root, _, files in os.walk(os.path.join(REPO, "stalign")):
    out += [
      _module_name(os.path.relpath(os.path.join(root, f), REPO)) for f in files if f.endswith(".py")
    ]
  return sorted(out)


def _imports(module: str, known: set[str]) -> set[str]:
  """stalign modules `module` imports anywhere in its file (function-level imports included)."""
  path = os.path.join(REPO, *module.split("."))
  path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
  with open(path) as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from stalign.data import text` names a module; `from stalign.data import SPLITS` does not.
      names = [
        f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
        for a in node.names
      ]
    else:
      continue
    out |= {n for n in names if n in known and n != module}
  return out


def test_every_module_is_placed_in_a_layer():
  layers = _layers()
  assert set(_package_modules()) == set(layers), (
    "docs/architecture.md and stalign/ disagree: "
    f"unplaced {sorted(set(_package_modules()) - set(layers))}, "
    f"gone {sorted(set(layers) - set(_package_modules()))}"
  )


def test_imports_point_down_and_close_no_cycle():
  layers = _layers()
  known = set(layers)
  graph = {m: _imports(m, known) for m in known}
  upward = [
    f"{m} (layer {layers[m]}) imports {d} (layer {layers[d]})"
    for m, deps in graph.items()
    for d in deps
    if layers[d] > layers[m]
  ]
  assert not upward, upward

  state = {}

  def visit(m, stack):
    state[m] = "open"
    for d in sorted(graph[m]):
      if state.get(d) == "open":
        raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(d) :] + [d])}")
      if d not in state:
        visit(d, stack + [d])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])


def test_the_layering_test_catches_an_upward_import(monkeypatch):
  """Guards the guard: a model module importing the train loop must be reported."""
  real = _imports

  def with_upward(module, known):
    return real(module, known) | (
      {"stalign.train"} if module == "stalign.models.student" else set()
    )

  monkeypatch.setattr(sys.modules[__name__], "_imports", with_upward)
  with pytest.raises(
    AssertionError, match="stalign.models.student .layer 2. imports stalign.train"
  ):
    test_imports_point_down_and_close_no_cycle()


# What training may not reach through any chain of stalign imports: the inference API (with the
# modules it restores and reads speech through) and the command-line modules (`evaluate` is the
# evaluation CLI; `model_card` is export's). Training evaluates through `evaluators.split` with
# its own eval step, so a change to a CLI cannot break a training run.
NOT_FROM_TRAINING = (
  "stalign.api",
  "stalign.restore",
  "stalign.speech_input",
  "stalign.evaluate",
  "stalign.main",
  "stalign.embed",
  "stalign.search",
  "stalign.export",
  "stalign.model_card",
  "stalign.precompute",
  "stalign.study",
)


def _import_chains(start: str, graph: dict[str, set[str]]) -> dict[str, list[str]]:
  """{every module `start` imports directly or transitively: a shortest import chain to it}."""
  chains, todo = {start: [start]}, collections.deque([start])
  while todo:
    module = todo.popleft()
    for dep in sorted(graph[module]):
      if dep not in chains:
        chains[dep] = chains[module] + [dep]
        todo.append(dep)
  return chains


# The training driver and its parts (`train_*`): none of them may reach what training may not.
TRAINING = (
  "stalign.train",
  "stalign.train_log",
  "stalign.train_optimizer",
  "stalign.train_steps",
  "stalign.train_validation",
)


def test_every_training_module_is_checked():
  assert set(TRAINING) == {m for m in _layers() if re.fullmatch(r"stalign\.train(_\w+)?", m)}


def test_training_imports_neither_the_inference_api_nor_a_cli():
  known = set(_layers())
  graph = {m: _imports(m, known) for m in known}
  reached = []
  for start in TRAINING:
    chains = _import_chains(start, graph)
    reached += [" -> ".join(chains[m]) for m in NOT_FROM_TRAINING if m in chains]
  assert not reached, reached


def test_the_training_test_catches_a_transitive_import(monkeypatch):
  """Guards the guard: the API reached through a module training imports must be reported."""
  real = _imports

  def with_chain(module, known):
    return real(module, known) | ({"stalign.api"} if module == "stalign.checkpoints" else set())

  monkeypatch.setattr(sys.modules[__name__], "_imports", with_chain)
  with pytest.raises(AssertionError, match="stalign.train -> stalign.checkpoints -> stalign.api"):
    test_training_imports_neither_the_inference_api_nor_a_cli()


@pytest.mark.usefixtures("prepared_config")
def test_inference_api_loads_no_training_code_or_tensorflow(tmp_path, prepared_config):
  from testdata import make_run  # pylint: disable=g-import-not-at-top

  run = make_run(prepared_config, str(tmp_path / "run"))
  script = f"""
import sys
import numpy as np
import stalign
model = stalign.load({run!r})
model.encode_speech([np.sin(np.arange(16000) / 5.0).astype(np.float32)])
heavy = [*{list(TRAINING)!r}, "stalign.prepare", "stalign.precompute", "stalign.input_pipeline",
         "stalign.data.tfrecords", "stalign.evaluate", "tensorflow", "clu"]
print(sorted(m for m in heavy if m in sys.modules))
"""
  out = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"
