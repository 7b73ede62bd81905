"""stalign.fs on its own: a write that fails or is killed leaves the old file or folder whole.

Local paths are real files. For `gs://` URLs the object-store calls (`_upload`,
`exists`, `remove`, `rmtree`) are replaced by a dict of objects, so the order
in which a staged folder reaches the store is checked without a server
(tests/test_gcs.py runs the same code against an emulator).
"""

import os

import pytest

from stalign import fs


class _Killed(Exception):
  """Stands in for the process dying inside the block."""


def test_atomic_write_replaces_the_file_only_when_the_block_succeeds(tmp_path):
  path = str(tmp_path / "summary.json")
  with fs.atomic_write(path) as f:
    f.write("old")
  with pytest.raises(_Killed), fs.atomic_write(path) as f:
    f.write("half of the new")
    raise _Killed
  assert fs.read_text(path) == "old"
  with fs.atomic_write(path, "wb") as f:
    f.write(b"new")
  assert fs.read_text(path) == "new"
  assert os.listdir(tmp_path) == ["summary.json"]  # The killed write's leftover was reused.


def test_staged_folder_killed_mid_write_keeps_the_old_folder(tmp_path):
  path = str(tmp_path / "export")
  with fs.staged_folder(path, "DONE") as folder:
    open(os.path.join(folder, "weights"), "w").write("old")
    open(os.path.join(folder, "DONE"), "w").write("")
  with pytest.raises(_Killed), fs.staged_folder(path, "DONE") as folder:
    open(os.path.join(folder, "weights"), "w").write("new")
    raise _Killed
  assert sorted(os.listdir(path)) == ["DONE", "weights"]
  assert fs.read_text(os.path.join(path, "weights")) == "old"
  with fs.staged_folder(path, "DONE") as folder:  # A rerun replaces it whole.
    open(os.path.join(folder, "weights"), "w").write("new")
    open(os.path.join(folder, "DONE"), "w").write("")
  assert fs.read_text(os.path.join(path, "weights")) == "new"
  assert not os.path.exists(path + ".tmp")


@pytest.fixture
def bucket(monkeypatch):
  """{url: bytes} standing in for gs://; every upload is also logged in order."""
  objects, uploads = {}, []

  def upload(local, url):
    objects[url] = open(local, "rb").read()
    uploads.append(url)

  def rmtree(url):
    for key in [k for k in objects if k.startswith(url.rstrip("/") + "/")]:
      del objects[key]

  monkeypatch.setattr(fs, "_upload", upload)
  monkeypatch.setattr(fs, "exists", lambda url: url in objects)
  monkeypatch.setattr(fs, "remove", objects.pop)
  monkeypatch.setattr(fs, "rmtree", rmtree)
  return objects, uploads


def test_remote_atomic_write_uploads_once_and_only_on_success(bucket):
  objects, uploads = bucket
  with pytest.raises(_Killed), fs.atomic_write("gs://b/run/config.json") as f:
    f.write("{}")
    raise _Killed
  assert objects == {}
  with fs.atomic_write("gs://b/run/config.json") as f:
    f.write("{}")
  assert objects == {"gs://b/run/config.json": b"{}"} and uploads == ["gs://b/run/config.json"]


def test_remote_staged_folder_uploads_its_marker_last_and_nothing_when_killed(bucket):
  objects, uploads = bucket
  old = {"gs://b/export/weights": b"old", "gs://b/export/DONE": b""}
  objects.update(old)
  with pytest.raises(_Killed), fs.staged_folder("gs://b/export", "DONE") as folder:
    open(os.path.join(folder, "weights"), "w").write("new")
    raise _Killed
  assert objects == old and uploads == []
  with fs.staged_folder("gs://b/export", "DONE") as folder:
    for name in ("DONE", "weights", "config.json"):  # The marker written first on purpose.
      open(os.path.join(folder, name), "w").write(name)
  assert uploads[-1] == "gs://b/export/DONE" and len(uploads) == 3
  assert objects == {f"gs://b/export/{n}": n.encode() for n in ("DONE", "weights", "config.json")}
