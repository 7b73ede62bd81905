"""What every command-line tool shares: quiet by default, one line per user error.

`python -m stalign.X` logs at WARNING unless `--verbosity=0` (INFO) or higher
is given, which also silences orbax's, TensorFlow's and JAX's INFO chatter. A
user error (a missing file, bad audio, a bad config value, flags that do not
go together) prints one line that says what to do and exits with status 2;
with `--verbosity=0` its traceback is shown too. Any other exception is a bug
and keeps its traceback.
"""

from collections.abc import Callable
import os
import sys

from absl import app
from absl import flags
from absl import logging

from stalign import config as config_lib
from stalign.data import audio
from stalign.data import text as text_lib

# Errors a user fixes by changing their input or flags, not the code.
USER_ERRORS = (
  app.UsageError,
  FileNotFoundError,
  FileExistsError,
  NotADirectoryError,
  IsADirectoryError,
  audio.AudioError,
  text_lib.TranscriptError,
  config_lib.ConfigError,
)


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, logging at WARNING by default and user errors as one line."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO lines.

  def guarded(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # absl would log INFO; quiet unless asked.
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except USER_ERRORS as e:
      if logging.get_verbosity() >= logging.INFO:
        raise
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
