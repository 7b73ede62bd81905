"""What every command-line tool shares: quiet TensorFlow, quiet logs, one line per user error.

Importing this module is the bootstrap of every `python -m stalign.X`: it sets
TensorFlow's environment, which TensorFlow reads once as it loads, so a command
imports `stalign.cli` before any module that loads TensorFlow (tests/test_main.py
checks each one). `TF_ENABLE_ONEDNN_OPTS=0` keeps TensorFlow's oneDNN notice,
printed at import whatever the log level, off the output: oneDNN only matters to
TensorFlow's float kernels, and TensorFlow only parses and pads data here. A
value the user set is kept. (Its C++ INFO lines are off already: JAX, which
loads first, sets `TF_CPP_MIN_LOG_LEVEL=1` unless the user set it.)

`python -m stalign.X` logs at WARNING unless `--verbosity=0` (INFO) or higher
is given, which also silences orbax's, TensorFlow's and JAX's INFO chatter. A
user error (a missing file, bad audio, a bad config value, flags that do not
go together) prints one line that says what to do and exits with status 2;
with `--verbosity=0` its traceback is shown too. Any other exception is a bug
and keeps its traceback. A `--config` file that does not exist, or a typo in its
`path.py:arg`, is refused the same way, though absl meets both while parsing flags.

The commands that run whole runs (`stalign.main`, `stalign.study`) define
their `--config`, `--workdir` and `--compilation_cache` here
(`define_run_flags`), and every command refuses positional arguments the same
way (`check_no_arguments`).
"""

from collections.abc import Callable
from collections.abc import Sequence
import os
import re
import sys
import textwrap
from typing import NamedTuple
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from stalign import config as config_lib
from stalign.data import audio
from stalign.data import text as text_lib

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Flags defined here (`define_run_flags`) belong to the command that asks for them: its --help
# lists them, as if it had defined them itself.
flags.disclaim_key_flags()

# Where the commands that compile keep XLA's programs: a rerun skips recompiling each bucket shape.
COMPILATION_CACHE = os.path.expanduser("~/.cache/stalign/jax")
# Where a positional argument of a command with `--config` belongs (`check_no_arguments`).
CONFIG_HINT = "settings go in --config.KEY=VALUE"

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


def _config_paths(argv: list[str]) -> list[str]:
  """The values given to `--config` (`--config=X` or `--config X`) in `argv`."""
  paths = []
  for flag, following in zip(argv, [*argv[1:], ""]):
    if flag.startswith("--config="):
      paths.append(flag.removeprefix("--config="))
    elif flag == "--config":
      paths.append(following)
  return paths


def _user_error(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _check_config_file(argv: list[str]) -> None:
  """Refuses a `--config` file that does not exist, in one line.

  Why before flag parsing: ml_collections defers a missing file's error to the
  first key read, and with a `--config.KEY=VALUE` override that read happens
  inside absl's flag parsing, as an OSError traceback.
  """
  for path in _config_paths(argv):
    if not os.path.isfile(path.split(":", 1)[0]):
      _user_error(
        f"--config={path}: no such config file; name one of configs/*.py (e.g. configs/demo.py)"
      )


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a ConfigError from a config file's `get_config(arg)` as one line.

  `get_config` runs while absl parses `--config`: ml_collections re-raises its
  ConfigError (a ValueError) with the traceback in the message, which absl would
  print as a "FATAL Flags parsing error". Every other flag error is reported as
  absl's own parser does (parsing again is no option: it would fail differently,
  on the `--config.KEY` flags the first parse defined).
  """
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections refuses a `--config.KEY=VALUE` whose KEY the config does not declare; its
    # message (the repr of a KeyError's) names the key and suggests the nearest declared one.
    text = str(e).replace("\\n", " ").replace("\\'", "'")
    key = re.search(r"'(\w+)'", text)
    hint = re.search(r"(Did you mean [^?]*\?)", text)
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    culprit = [o for o in overrides if key and key.group(1) in o.split(".")[1:]]
    if not culprit:
      raise
    _user_error(
      f"{culprit[0]}: the config has no such key"
      + (f" ({hint.group(1)})" if hint else "")
      + "; every key is declared in configs/demo.py"
    )
  except flags.Error as e:
    cause, config_error = e, None
    while cause is not None:  # absl's error <- ml_collections' copy <- the original.
      config_error = cause if isinstance(cause, config_lib.ConfigError) else config_error
      cause = cause.__context__
    if config_error is not None:
      given = _config_paths(argv)  # Empty when --config came from a --flagfile.
      _user_error(f"--config{'=' + given[-1] if given else ''}: {config_error}")
    message = str(e)
    message = f"\n{textwrap.indent(message, '  ')}" if "\n" in message else f" {message}"
    print(f"FATAL Flags parsing error:{message}", file=sys.stderr)
    print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
    sys.exit(1)


class RunFlags(NamedTuple):
  """The flags of a command that runs whole runs (`define_run_flags`)."""

  config: flags.FlagHolder
  workdir: flags.FlagHolder
  compilation_cache: flags.FlagHolder


def define_run_flags(config_help: str, workdir_help: str) -> RunFlags:
  """`--config`, `--workdir` and `--compilation_cache`, for `stalign.main` or `stalign.study`.

  Call it once, at the command's import; the help of the first two is the command's own.
  """
  return RunFlags(
    config=config_flags.DEFINE_config_file("config", None, config_help, lock_config=True),
    workdir=flags.DEFINE_string("workdir", None, workdir_help),
    compilation_cache=flags.DEFINE_string(
      "compilation_cache",
      COMPILATION_CACHE,
      "Persistent XLA compilation cache, shared by stalign.main and stalign.study: a rerun skips "
      "recompiling each bucket shape. '' disables it.",
    ),
  )


def check_no_arguments(argv: Sequence[str], hint: str = "") -> None:
  """Refuses positional arguments, naming them: every input of a command is a flag.

  `hint` says where what was meant goes (e.g. `CONFIG_HINT` for a command with `--config`).
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}" + (f"; {hint}" if hint else ""))


def use_compilation_cache(path: str) -> None:
  """Keeps compiled programs in `path` across processes ('' leaves the cache off).

  A cache folder set already (`JAX_COMPILATION_CACHE_DIR`, as the tests set one) is kept.
  """
  if path and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", path)


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, logging at WARNING by default and user errors as one line."""
  if "config" in flags.FLAGS:
    _check_config_file(sys.argv)

  def guarded(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # absl would log INFO; quiet unless asked.
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except USER_ERRORS as e:
      if logging.get_verbosity() >= logging.INFO:
        raise
      _user_error(str(e))

  app.run(guarded, flags_parser=_parse_flags)
