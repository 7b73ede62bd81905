"""Long work over many inputs, in chunks that survive a kill: each is saved as it finishes.

The teacher's targets (`stalign.precompute`) and users' embeddings
(`stalign.embed`) both run for hours over inputs that a preempted machine
must not embed twice. A `Cache` cuts the inputs into chunks of a fixed size
and saves each chunk's arrays as one `.npz` file (`fs.atomic_write`: whole or
absent, locally or in a bucket), named by the chunk's index and a digest of
its inputs. A rerun over the same inputs finds the finished chunks and
computes only the rest; a chunk whose inputs changed has another name, so
a stale result is never read as a fresh one.
"""

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
import hashlib
import io
import json
import os

import numpy as np
import tqdm

from stalign import fs


class Cache:
  """The chunks of `items` (JSON-serialisable) and their saved results in `folder`."""

  def __init__(self, folder: str, items: Sequence, size: int):
    self.folder = folder
    self.chunks = [items[i : i + size] for i in range(0, len(items), size)]

  def __len__(self) -> int:
    return len(self.chunks)

  def path(self, index: int) -> str:
    """Where chunk `index` is saved: its index and a digest of its inputs name it."""
    key = json.dumps(list(self.chunks[index]), sort_keys=True).encode()
    digest = hashlib.sha1(key).hexdigest()[:16]
    return os.path.join(self.folder, f"chunk-{index:06d}-{digest}.npz")

  def fill(
    self,
    compute: Callable[[Sequence], Mapping[str, np.ndarray]],
    indices: Iterable[int] | None = None,
    desc: str = "chunks",
    unit: str = "input",
  ) -> None:
    """Computes and saves each chunk of `indices` (default: all) that is not saved yet.

    Args:
      compute: a chunk's inputs -> the arrays to save for it.
      indices: the chunks this caller computes (several hosts split them).
      desc: the progress bar's label; the bar counts inputs and shows on a terminal.
      unit: what an input is called on the bar.
    """
    fs.makedirs(self.folder)
    indices = list(range(len(self.chunks)) if indices is None else indices)
    todo = [i for i in indices if not fs.exists(self.path(i))]
    total = sum(len(self.chunks[i]) for i in indices)
    done = total - sum(len(self.chunks[i]) for i in todo)
    with tqdm.tqdm(total=total, initial=done, desc=desc, unit=unit, disable=None) as progress:
      for i in todo:
        arrays = compute(self.chunks[i])
        with fs.atomic_write(self.path(i), "wb") as f:
          np.savez(f, **arrays)
        progress.update(len(self.chunks[i]))

  def read(self, index: int) -> dict[str, np.ndarray]:
    """The arrays saved for chunk `index`."""
    with np.load(io.BytesIO(fs.read_bytes(self.path(index)))) as saved:
      return {name: saved[name] for name in saved.files}
