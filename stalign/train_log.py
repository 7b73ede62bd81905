"""What a run records as it trains: TensorBoard event files and `train_history.json`.

Both live in the workdir, which may be a `gs://` URL; process 0 writes them.
`History` holds the figures of log steps (`train`), checkpoint steps
(`valid`) and evaluator steps (`evaluators`), so readers such as the study's
curves need no TensorBoard event files. A resumed run carries on the history
of the run it resumes rather than starting a new one.
"""

import json
import os
import shutil
import tempfile

from clu import metric_writers
import jax

from stalign import fs

HISTORY = "train_history.json"
SECTIONS = ("train", "valid", "evaluators")


class TensorBoard:
  """The metric writer, and where its event files go.

  Event files grow by appending, which an object store cannot do: for a
  `gs://` workdir they are written to a local folder and uploaded whole at
  each `flush` (checkpoint steps and `close`), by process 0 only.
  """

  def __init__(self, workdir: str):
    self.folder = os.path.join(workdir, "tensorboard")
    remote = fs.is_remote(workdir)
    self.local = tempfile.mkdtemp(prefix="stalign-tensorboard-") if remote else self.folder
    self.writer = metric_writers.create_default_writer(
      self.local, just_logging=jax.process_index() > 0
    )

  def flush(self) -> None:
    self.writer.flush()
    self._upload()

  def close(self) -> None:
    """The last flush; the local folder of a `gs://` workdir's event files is then removed."""
    self.writer.close()
    self._upload()
    if self.local != self.folder:
      shutil.rmtree(self.local, ignore_errors=True)

  def _upload(self) -> None:
    if self.local != self.folder and jax.process_index() == 0:
      fs.sync_folder(self.local, self.folder)


class History:
  """`train_history.json`: one entry ({"step", figures...}) per recorded step, by section.

  A run resumed from a checkpoint at `restored_step` keeps the entries an
  earlier run of the workdir wrote up to that step, and drops those after it:
  the resumed run records those steps again from the checkpoint's state, so no
  step appears twice.
  """

  def __init__(self, workdir: str, restored_step: int):
    self.path = os.path.join(workdir, HISTORY)
    resumed = restored_step > 0 and fs.exists(self.path)
    saved = json.loads(fs.read_text(self.path)) if resumed else {}
    self.entries = {
      section: [e for e in saved.get(section, []) if e["step"] <= restored_step]
      for section in SECTIONS
    }

  def add(self, section: str, step: int, figures: dict) -> None:
    self.entries[section].append({"step": step, **figures})

  def last(self, section: str) -> dict:
    """The latest entry of `section`, {} if it has none."""
    return self.entries[section][-1] if self.entries[section] else {}

  def write(self, summary: dict) -> None:
    """The file, with the run's `summary` first (process 0 writes it, atomically)."""
    if jax.process_index() == 0:
      with fs.atomic_write(self.path) as f:
        json.dump({"summary": summary, **self.entries}, f, indent=1)
