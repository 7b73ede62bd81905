"""What a run records: TensorBoard event files reach a `gs://` workdir and leave no local copy."""

import glob
import os
import shutil

from stalign import fs
from stalign import train_log


def test_a_remote_workdirs_event_files_are_uploaded_and_their_local_folder_removed(
  tmp_path, monkeypatch
):
  bucket = tmp_path / "bucket"
  monkeypatch.setattr(fs, "is_remote", lambda path: path.startswith("gs://"))
  # The object store stood in for by a local folder: each sync copies the files whole.
  monkeypatch.setattr(
    fs,
    "sync_folder",
    lambda local, path: shutil.copytree(
      local, bucket / path.removeprefix("gs://"), dirs_exist_ok=True
    ),
  )
  tensorboard = train_log.TensorBoard("gs://b/run")
  local = tensorboard.local
  assert os.path.isdir(local) and local != tensorboard.folder
  tensorboard.writer.write_scalars(1, {"loss": 1.0})
  tensorboard.flush()
  assert glob.glob(str(bucket / "b/run/tensorboard/events.out.tfevents.*"))
  tensorboard.writer.write_scalars(2, {"loss": 0.5})
  tensorboard.close()
  assert not os.path.exists(local)
  events = glob.glob(str(bucket / "b/run/tensorboard/events.out.tfevents.*"))
  assert len(events) == 1 and os.path.getsize(events[0]) > 0


def test_a_local_workdirs_event_files_stay_where_they_were_written(tmp_path):
  tensorboard = train_log.TensorBoard(str(tmp_path / "run"))
  tensorboard.writer.write_scalars(1, {"loss": 1.0})
  tensorboard.close()
  assert glob.glob(str(tmp_path / "run" / "tensorboard" / "events.out.tfevents.*"))
