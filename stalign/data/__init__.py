"""Data: audio and text checks, the synthetic corpus, sources, features and TFRecords."""

# Splits every data source provides, in the order they are built.
SPLITS = ("train", "valid", "test")
# The synthetic corpus's extra split: command intents held out of every other split.
ZERO_SHOT_SPLIT = "zero_shot"
