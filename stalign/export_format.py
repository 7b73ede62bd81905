"""The export folder's format: its file names, its manifest and the reading of its files.

`python -m stalign.export` writes an export and `stalign.load` reads one; both
take the names, the version and the parameter keys from here, so the writer
and the reader cannot drift apart. An export holds:

  stalign_export.json  the manifest, written last: it marks the folder as a
                       whole export ({"format", "format_version", "step", ...})
  params.safetensors   the student's parameters, one tensor per `param_key`
  config.json          the resolved config, as a run saves it
  teacher_stats.npz    the teacher's width and training mean (`data.layout`'s format)
"""

import json
import os

from absl import app
from flax import nnx
import numpy as np
import safetensors.numpy

from stalign import fs
from stalign.data import layout

MANIFEST = "stalign_export.json"
FORMAT = "stalign-export"
FORMAT_VERSION = 1
PARAMS = "params.safetensors"
CONFIG = "config.json"
TEACHER_STATS = "teacher_stats.npz"
# The ARPA word model of a run whose `model.ctc_lm` names a file of its own, copied in; the
# export's config names it by this file name, which `stalign.load` reads inside the export.
WORD_MODEL = "word_model.arpa"


class ExportError(app.UsageError):
  """An export folder this stalign cannot read; the message names the file and the fix.

  A `UsageError`, so the command-line tools report it as one line (`stalign.cli`).
  """


def param_key(path: tuple) -> str:
  """A parameter's path in the student's state as one string key: `blocks/0/ff1/up/kernel`."""
  return "/".join(str(k) for k in path)


def is_export(path: str) -> bool:
  return fs.isfile(os.path.join(path, MANIFEST))


def read_manifest(path: str) -> dict:
  """The manifest of an export folder, after checking that this stalign reads its format."""
  file = os.path.join(path, MANIFEST)
  try:
    manifest = json.loads(fs.read_text(file))
  except ValueError as e:
    raise ExportError(
      f"{file} is not JSON ({e}): the export is damaged; export the run again"
    ) from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else manifest
    raise ExportError(
      f"{file}: format {found!r} is not {FORMAT!r}: not a folder written by "
      "`python -m stalign.export`; load the run it came from, or export that run"
    )
  version = manifest.get("format_version", 0)
  if not isinstance(version, int) or version > FORMAT_VERSION:
    raise ExportError(
      f"{file}: export format version {version!r} is newer than this stalign reads "
      f"({FORMAT_VERSION}); upgrade stalign"
    )
  return manifest


def check_files(path: str, word_model: bool = False) -> None:
  """Every file an export loads from is there (a copy or upload may have left one behind)."""
  for name in (CONFIG, TEACHER_STATS, PARAMS) + ((WORD_MODEL,) if word_model else ()):
    file = os.path.join(path, name)
    if not fs.exists(file):
      raise FileNotFoundError(f"{file} not found: the export is incomplete; export the run again")


def check_not_partial(path: str) -> None:
  """Refuses a folder with an export's parameters but no manifest: an export cut short."""
  if fs.exists(os.path.join(path, PARAMS)):
    raise ExportError(
      f"{path} holds {PARAMS} but no {MANIFEST}: an export cut short (the manifest "
      "is written last); export the run again"
    )


def read_teacher_stats(path: str) -> tuple[int, np.ndarray]:
  """(teacher width, training mean) that the export carries."""
  return layout.read_teacher_stats_file(os.path.join(path, TEACHER_STATS))


def read_params(path: str, abstract: nnx.State, built_by: str) -> nnx.State:
  """The export's parameters in the shapes of `abstract` (the student's), as float32.

  Args:
    path: the export folder.
    abstract: the student's abstract state (`nnx.eval_shape`), filled in place.
    built_by: what built the student, for the error when the two do not fit
      ("config.json", or "the config given").

  Returns:
    `abstract`, holding the parameters.
  """
  with fs.local_copy(os.path.join(path, PARAMS)) as params_file:
    tensors = safetensors.numpy.load_file(params_file)
  want = {param_key(p): (p, v) for p, v in nnx.to_flat_state(abstract)}
  misfit = (
    [f"{key} missing" for key in sorted(set(want) - set(tensors))]
    + [f"{key} is no parameter" for key in sorted(set(tensors) - set(want))]
    + [
      f"{key} is {tensors[key].shape}, not {v.shape}"
      for key, (_, v) in want.items()
      if key in tensors and tensors[key].shape != v.shape
    ]
  )
  if misfit:
    raise ExportError(
      f"{path}/{PARAMS} does not fit the student that {built_by} builds ({'; '.join(misfit[:3])}"
      f"{'; ...' if len(misfit) > 3 else ''}): export the run again, or load with the config "
      "it was trained with"
    )
  pure = {p: tensors[key].astype(v.dtype) for key, (p, v) in want.items()}  # bf16 -> float32.
  nnx.replace_by_pure_dict(abstract, nnx.traversals.unflatten_mapping(pure))
  return abstract
