"""Finding what a trained student needs on disk, and reading it: a run's or an export's.

A run (`python -m stalign.main`) keeps its config in `config.json`, its
parameters in orbax checkpoints and the training mean in its data folder,
which `config.data_dir` names relative to where training ran; an export
(`python -m stalign.export`) holds all three itself (`export_format`). This
module resolves those paths and returns the parts; `api.load` makes them a
`Model`. Runs, exports and data folders may be local or `gs://` URLs (`fs`).
"""

import json
import os
from typing import NamedTuple

from absl import logging
from flax import nnx
import ml_collections
import numpy as np

from stalign import checkpoints
from stalign import config as config_lib
from stalign import export_format
from stalign import fs
from stalign.data import layout
from stalign.models import student as student_lib


class Restored(NamedTuple):
  """The restored student and its space, in the order of `api.Model`'s arguments."""

  config: ml_collections.ConfigDict
  graphdef: nnx.GraphDef
  params: nnx.State
  target_mean: np.ndarray
  step: int


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run or an export saved (`config.json`), as a ConfigDict."""
  if not fs.isdir(workdir):
    raise FileNotFoundError(
      f"{workdir} is not a folder: pass a run directory written by stalign.main or a folder "
      "written by stalign.export"
    )
  path = os.path.join(workdir, "config.json")
  if not fs.exists(path):
    raise FileNotFoundError(
      f"{path} not found: pass a run directory written by stalign.main or a folder written by "
      "stalign.export (or give the config explicitly)"
    )
  return config_lib.upgrade(ml_collections.ConfigDict(json.loads(fs.read_text(path))))


def _split_path(path: str) -> tuple[str, int | None]:
  """(workdir, step) for a run directory, its checkpoints/ folder or one checkpoint step folder."""
  path = fs.abspath(path).rstrip("/")
  if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
    return os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  if os.path.basename(path) == "checkpoints":
    return os.path.dirname(path), None
  return path, None


def resolve_data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`config.data_dir` as saved is relative to where training ran: try there, then above the run.

  A folder of that name built with other settings (`layout.check_built_with` on its train split:
  another front end, other sources) is passed over, so a run evaluated from another directory
  never reads a namesake folder whose features it cannot take.
  """
  rel = config.data_dir
  # dict.fromkeys: an absolute data_dir joins every ancestor as itself; try it once.
  candidates = list(dict.fromkeys([rel] + [os.path.join(d, rel) for d in _ancestors(workdir)]))
  passed_over = []
  for c in candidates:
    if not fs.exists(layout.teacher_stats_path(c)):
      continue
    try:
      if fs.exists(layout.summary_path(c, "train")):
        candidate = config.copy_and_resolve_references()
        candidate.data_dir = c
        layout.check_built_with(candidate, "train", layout.read_summary(c, "train"))
    except ValueError as e:
      passed_over.append(str(e))
      continue
    return fs.abspath(c)
  if passed_over:
    raise FileNotFoundError(
      f"no data folder {rel!r} of {workdir} was built with the run's settings ({passed_over[0]}); "
      "pass config= (or --config.data_dir) with data_dir set to the run's data folder"
    )
  raise FileNotFoundError(
    f"teacher_stats.npz not found under data_dir={rel!r} of {workdir} (tried {candidates}): "
    "it holds the training mean the embeddings are centred on; pass config= with data_dir set "
    "to the run's data folder, or load a folder written by `python -m stalign.export`"
  )


def _ancestors(path: str) -> list[str]:
  """Folders above `path`, nearest first; for a URL, up to its bucket."""
  out, path = [], fs.abspath(path).rstrip("/")
  while os.path.dirname(path) != path and not os.path.dirname(path).endswith(":/"):
    path = os.path.dirname(path)
    out.append(path)
  return out


def _from_export(path: str, step: int | None, config: ml_collections.ConfigDict | None) -> Restored:
  """The student of an export folder alone: params, config and teacher statistics are inside."""
  manifest = export_format.read_manifest(path)
  if step is not None and step != manifest["step"]:
    raise FileNotFoundError(
      f"{path} is an export of step {manifest['step']}, not {step}; export step {step} "
      "with `python -m stalign.export --step`"
    )
  built_by = "the config given" if config is not None else export_format.CONFIG
  config = ml_collections.ConfigDict((config or config_from_workdir(path)).to_dict())
  word_model = config.model.get("ctc_lm") == export_format.WORD_MODEL
  export_format.check_files(path, word_model)
  if word_model:  # The run's own word model, copied into the export: read it there.
    config.model.ctc_lm = os.path.join(path, export_format.WORD_MODEL)
  config = config_lib.validate_config(config)
  dim, mean = export_format.read_teacher_stats(path)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: student_lib.build(config, dim)))
  params = export_format.read_params(path, abstract, built_by)
  logging.info("loaded export %s (step %d, %s)", path, manifest["step"], manifest["dtype"])
  return Restored(config, graphdef, params, mean, manifest["step"])


def student(
  path: str, step: int | None = None, config: ml_collections.ConfigDict | None = None
) -> Restored:
  """The trained student of a run or an export (`api.load`'s arguments, which it documents)."""
  if export_format.is_export(path):
    return _from_export(path, step, config)
  export_format.check_not_partial(path)
  workdir, path_step = _split_path(path)
  config = config_lib.validate_config(config or config_from_workdir(workdir))
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy: data_dir may be resolved.
  config.data_dir = resolve_data_dir(config, workdir)
  dim, mean = layout.read_teacher_stats(config.data_dir)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: student_lib.build(config, dim)))
  params, step = checkpoints.restore_params(
    workdir, abstract, step if step is not None else path_step
  )
  logging.info("loaded %s step %d", workdir, step)
  return Restored(config, graphdef, params, mean, step)
