"""Builds every split's TFRecords from the configured source, once, then adds teacher embeddings."""
import itertools
import os

from absl import logging
import ml_collections

from stalign import precompute
from stalign.data import sources
from stalign.data import tfrecords

SPLITS = ("train", "valid", "test")


def splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Splits to build; the synthetic corpus adds its zero-shot split (intents unseen in training)."""
  extra = ("zero_shot",) if config.data.source == "synthetic" else ()
  return tuple(dict.fromkeys(SPLITS + (config.eval.split,) + extra))


def prepare(config: ml_collections.ConfigDict) -> dict:
  """Idempotent: splits whose summary exists are kept; returns each split's summary."""
  source = sources.get(config.data.source)
  summaries = {}
  for split in splits(config):
    if os.path.exists(tfrecords.summary_path(config.data_dir, split)):
      summaries[split] = tfrecords.read_summary(config.data_dir, split)
      stored = summaries[split].get("ctc_targets", "chars")
      if stored != config.features.ctc_targets:
        raise ValueError(
            f"{config.data_dir} holds {stored} CTC targets but features.ctc_targets="
            f"{config.features.ctc_targets!r}; point --config.data_dir at a new folder")
      logging.info("split %s: reusing %d examples in %s", split, summaries[split]["written"],
                   config.data_dir)
      continue
    examples = source(config, split)
    if split == "train" and config.data.train_extra:
      extra = [sources.get(name)(config, split) for name in config.data.train_extra]
      examples = itertools.chain(examples, *extra)  # The reader's shuffle mixes them.
    summaries[split] = tfrecords.write_split(examples, config, split, config.data.num_shards)
  precompute.precompute(config, splits(config))
  return summaries
