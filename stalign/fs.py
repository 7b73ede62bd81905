"""One file layer for every path stalign reads or writes: local paths and `gs://` URLs alike.

Paths are `etils.epath` paths, the type orbax itself uses, so a workdir or a
data folder behaves the same in our code and in the checkpointer. For URLs
epath has two backends: `tf.io.gfile` (its default whenever TensorFlow is
installed) and fsspec (gcsfs for `gs://`). We use the fsspec one, for ours
and orbax's paths alike (`EPATH_USE_TF=false`, set here unless the user set
it): TensorFlow's GCS client has its endpoint compiled in
(`https://www.googleapis.com/storage/v1/`), so nothing written through it can
be tested against an emulator, while gcsfs, like google-cloud-storage and
tensorstore, can be pointed at one (`STORAGE_EMULATOR_HOST`,
`TENSORSTORE_GCS_HTTP_URL`). TensorFlow therefore never opens a path of ours:
TFRecords are framed in Python (`stalign.data.tfrecords`), and records at known
offsets are read with one ranged GET each (`read_ranges`).

Object stores have no atomic rename, but an object appears only when its
upload completes. So every write that must never be seen half-done
(`atomic_write`, `staged`) goes to a local temporary file first and then
becomes the final object in one upload (`put_file`: one request, or a
resumable upload that is finalised last); locally it is a temporary name
renamed over the target. Paths are composed with `os.path.join`, which
treats a URL as a string. Several hosts read what others wrote only after a
barrier, and gcsfs's listing cache is off so that none reads a stale listing.
"""

import builtins
from collections.abc import Iterator
from collections.abc import Sequence
import contextlib
import os
import tempfile
from typing import IO

os.environ.setdefault("EPATH_USE_TF", "false")  # Before epath picks a backend (module docstring).

from etils import epath  # noqa: E402
import fsspec  # noqa: E402

# Other hosts write into the same folders: a cached listing would hide their files.
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)


def is_remote(path: str) -> bool:
  """A URL (`gs://...`) rather than a local path."""
  return "://" in os.fspath(path)


def abspath(path: str) -> str:
  """Absolute local path; a URL unchanged (`os.path.abspath` would make gs://b/x a local folder)."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def isdir(path: str) -> bool:
  return epath.Path(path).is_dir()


def isfile(path: str) -> bool:
  return epath.Path(path).is_file()


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def glob(folder: str, pattern: str) -> list[str]:
  """Sorted entries of `folder` matching `pattern` (one level: no `**` on object stores)."""
  root = epath.Path(folder)
  return sorted(os.fspath(p) for p in root.glob(pattern)) if root.exists() else []


def walk_files(folder: str) -> list[str]:
  """Every file under `folder`, at any depth, sorted; one listing on an object store."""
  if not is_remote(folder):
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
  filesystem, path = _filesystem(folder)
  return sorted(filesystem.unstrip_protocol(p) for p in filesystem.find(path))


def size(path: str) -> int:
  """The file's length in bytes."""
  return epath.Path(path).stat().length


def remove(path: str) -> None:
  epath.Path(path).unlink()


def rmtree(path: str) -> None:
  """Removes the folder and everything under it; nothing to remove is not an error."""
  epath.Path(path).rmtree(missing_ok=True)


def open(path: str, mode: str = "r") -> IO:  # noqa: A001 - the file layer's `open`.
  """A file object for reading, or for a write that may be seen partly done (use `atomic_write`)."""
  return epath.Path(path).open(mode)


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def read_bytes(path: str) -> bytes:
  return epath.Path(path).read_bytes()


def read_ranges(ranges: Sequence[tuple[str, int, int]]) -> Iterator[bytes]:
  """The bytes `[offset, offset + length)` of each `(path, offset, length)`, in the order given.

  For reading records at known offsets (`stalign.data.tfrecords.RecordIndex`);
  the paths are all local or all on one object store.
  From an object store each range is one ranged GET of exactly its bytes, all
  of them sent concurrently. A file object would fetch more: opening one costs
  a metadata request, and gcsfs's read cache turns each record into several
  small GETs (header, data, checksum) and, once reads look sequential,
  prefetches past the record. Local files are opened once each and each range
  is read with `os.pread` when the caller asks for it: one copy from the page
  cache, and a caller that is done with each before the next holds one at a
  time, whose memory the next reuses (holding a whole batch of fresh buffers
  made the training reader's Python part 3x slower).
  """
  if not ranges:
    return
  if is_remote(ranges[0][0]):
    filesystem, _ = _filesystem(ranges[0][0])
    paths, starts, ends = zip(*((path, offset, offset + length) for path, offset, length in ranges))
    yield from filesystem.cat_ranges(list(paths), list(starts), list(ends), on_error="raise")
    return
  files = {}
  try:
    for path, offset, length in ranges:
      if path not in files:
        files[path] = os.open(path, os.O_RDONLY)
      yield os.pread(files[path], length, offset)
  finally:
    for fd in files.values():
      os.close(fd)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """A local file name with `path`'s content: `path` itself, or a temporary download of a URL.

  For readers that need a real file name (safetensors' `load_file`, which
  unlike its reader of bytes knows bfloat16), as `staged` is for writers.
  """
  if not is_remote(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory(prefix="stalign-copy-") as folder:
    local = os.path.join(folder, os.path.basename(os.fspath(path)))
    filesystem, source = _filesystem(path)
    filesystem.get_file(source, local)
    yield local


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
  """The fsspec file system of a URL, and the URL as that file system names it."""
  return fsspec.core.url_to_fs(url)


def _upload(local: str, path: str) -> None:
  """`local` becomes the object `path` in one upload: visible whole or not at all."""
  filesystem, target = _filesystem(path)
  filesystem.put_file(local, target)


@contextlib.contextmanager
def staged(path: str) -> Iterator[str]:
  """A local file name to write `path` under; it becomes `path` only when the block succeeds.

  For writers that need a real file name (TFRecordWriter-style, savefig with
  no file object). Locally the name is `path + ".tmp"`, renamed at the end; for
  a URL it is a local temporary file, uploaded at the end as one object.
  """
  if not is_remote(path):
    tmp = os.fspath(path) + ".tmp"
    yield tmp
    os.replace(tmp, path)
    return
  with tempfile.TemporaryDirectory(prefix="stalign-staged-") as folder:
    local = os.path.join(folder, os.path.basename(os.fspath(path)))
    yield local
    _upload(local, path)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
  """Opens a file for writing that becomes `path` only when the block succeeds.

  A killed job therefore leaves either the old file or the complete new one,
  never a truncated file that a rerun would take as finished (see the module
  docstring for how that holds on an object store).
  """
  with staged(path) as local, builtins.open(local, mode) as f:
    yield f


@contextlib.contextmanager
def staged_folder(path: str, marker: str) -> Iterator[str]:
  """A local folder to write the folder `path` in; it replaces `path` only when the block succeeds.

  For a folder that readers take as whole only once it holds the file
  `marker` (written last). Locally the folder is `path + ".tmp"`, renamed over
  `path` at the end. An object store has no folder rename: the old `marker`
  is removed first, then the rest of the old folder, and the new files are
  uploaded one object each, `marker` last. A job killed at any point therefore
  leaves the old folder, the new one, or one without `marker`.
  """
  if not is_remote(path):
    tmp = os.fspath(path).rstrip("/") + ".tmp"
    rmtree(tmp)
    os.makedirs(tmp)
    yield tmp
    rmtree(path)
    os.replace(tmp, path)
    return
  with tempfile.TemporaryDirectory(prefix="stalign-staged-") as local:
    yield local
    if exists(os.path.join(path, marker)):
      remove(os.path.join(path, marker))
    rmtree(path)
    sync_folder(local, path, last=marker)


def sync_folder(local: str, path: str, last: str | None = None) -> None:
  """Uploads every file of the local folder `local` to the folder `path`, each as one object.

  For files written by appending (TensorBoard event files), which an object
  store cannot take: they are written locally and copied whole at each sync.
  `last` (a name relative to `local`) is uploaded after all the others: the
  marker of a folder staged whole (`staged_folder`).
  """
  names = [os.path.relpath(f, local) for f in walk_files(local)]
  for name in sorted(names, key=lambda name: name == last):
    _upload(os.path.join(local, name), os.path.join(path, name))
