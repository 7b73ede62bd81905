"""Data: audio and text checks, the synthetic corpus, sources, features and TFRecords."""

import os

# The environment variable naming the folder that holds the real speech sets (fsdd/, an4/,
# librispeech_mini/); unset, they are looked for in ../shared/data, beside the repository.
DATA_ROOT_ENV = "STALIGN_DATA"
# Each real speech set's folder under that root: what it is and where to get it, for the one-line
# errors (`sources.check_real_speech`) and the tests' skip reasons.
REAL_SET_ORIGINS = {
  "fsdd": "the Free Spoken Digit Dataset (English digits, 8 kHz; git clone "
  "https://github.com/Jakobovski/free-spoken-digit-dataset fsdd, or TFDS spoken_digit)",
  "librispeech_mini": "an extracted LibriSpeech subset (e.g. Mini LibriSpeech train-clean-5, "
  "openslr.org/31)",
  "an4": "CMU AN4 as a NeMo manifest with a speaker per line (speech.cs.cmu.edu/databases/an4)",
}

# Splits every data source provides, in the order they are built.
SPLITS = ("train", "valid", "test")
# The synthetic corpus's extra split: command intents held out of every other split.
ZERO_SHOT_SPLIT = "zero_shot"
# Sources of real human speech whose valid and test speakers are named in `data.real_held_out`
# (stalign/data/sources.py); their train split is every other speaker.
REAL_SOURCES = ("librispeech", "an4")


def real_split(split: str) -> str:
  """The split of real speech by unseen speakers evaluated beside `split` ("test" -> "real_test").

  `prepare` builds it from the held-out speakers of every source in `data.real_sources`.
  """
  return f"real_{split}"


def real_data_dir(name: str) -> str:
  """The folder of the real speech set `name` ("fsdd", "an4", "librispeech_mini").

  Under $STALIGN_DATA when set, else `../shared/data` (relative to the working
  directory: the repository root for `make` and the CLIs). The configs, tests
  and benchmarks all find the sets here, so one variable moves them all.
  """
  return os.path.join(os.environ.get(DATA_ROOT_ENV) or os.path.join("..", "shared", "data"), name)
