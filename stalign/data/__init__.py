"""Data: audio and text checks, the synthetic corpus, sources, features and TFRecords."""

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
