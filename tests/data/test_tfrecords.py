"""The record format: what `serialize` writes is the same bytes in any process."""

import subprocess
import sys

import numpy as np  # noqa: F401 - `_RECORD` names it.

from stalign.data import tfrecords

from testdata import REPO

_RECORD = """dict(
  id="clip:1", text="turn on the light", features=np.arange(24.0).reshape(6, 4),
  ctc_labels=[3, 1, 4], duration=0.75, labels={"speaker": "s1", "intent": "on"},
)"""


def test_a_record_serializes_to_the_same_bytes_in_another_process():
  """Protobuf orders a map's fields by a per-process hash unless told otherwise; shards written by
  several processes (the shared data stage) must equal one process's, byte for byte."""
  script = (
    "import sys, numpy as np\nfrom stalign.data import tfrecords\n"
    f"sys.stdout.write(tfrecords.serialize({_RECORD}).hex())"
  )
  outs = {
    subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for _ in range(2)
  }
  assert outs == {tfrecords.serialize(eval(_RECORD)).hex()}  # noqa: S307 - our own literal.
