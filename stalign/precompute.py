"""Teacher embeddings, computed once per distinct transcript and stored in the TFRecords.

The teacher is frozen, so running it inside every training step would only
cost time and memory. Transcripts are deduplicated across all splits, embedded
in large length-bucketed batches and saved chunk by chunk (a killed run keeps
its finished chunks); then each shard is rewritten with a `teacher_embedding`
per example, under a temporary name and renamed, so a shard is either old or
complete. At the end every example is checked to hold exactly one embedding.
Several processes split the chunks and then the shards by process index, each
running the teacher on its own devices; they must share `data_dir`.

  python -m stalign.precompute --config=configs/demo.py
"""

import os

if __name__ == "__main__":  # As a CLI: quiet TensorFlow's C++ side before it loads (see main.py).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import hashlib

from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np
import tensorflow as tf
import tqdm

from stalign import cli
from stalign import utils
from stalign.data import layout
from stalign.data import tfrecords
from stalign.models import teacher as teacher_lib

CHUNK = 4096


def _has_embeddings(shard: str) -> bool:
  for raw in tf.data.TFRecordDataset(shard).take(1).as_numpy_iterator():
    return tfrecords.deserialize(raw)["teacher_embedding"] is not None
  return True  # An empty shard needs nothing.


def _texts(files: list[str]) -> list[str]:
  """Transcripts only: parsing just this field skips decoding every record's features."""
  spec = {"text": tf.io.FixedLenFeature([], tf.string)}
  ds = tf.data.TFRecordDataset(files).map(lambda raw: tf.io.parse_single_example(raw, spec)["text"])
  return [t.decode() for t in ds.as_numpy_iterator()]


def _embed_chunks(
  texts: list[str], teacher, cache_dir: str, batch_size: int
) -> dict[str, np.ndarray]:
  """Embeds `texts` (sorted, distinct) chunk by chunk; finished chunks are reused on restart."""
  os.makedirs(cache_dir, exist_ok=True)
  chunks = [texts[i : i + CHUNK] for i in range(0, len(texts), CHUNK)]
  mine = [i for i in range(len(chunks)) if i % jax.process_count() == jax.process_index()]
  for i in tqdm.tqdm(mine, desc="teacher", unit="chunk", disable=not mine):
    digest = hashlib.sha1("\n".join(chunks[i]).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"chunk-{i:05d}-{digest}.npy")
    if not os.path.exists(path):
      with utils.atomic_write(path, "wb") as f:
        np.save(f, teacher.embed(chunks[i], batch_size=batch_size))
  multihost_utils.sync_global_devices("teacher chunks")
  table = {}
  for i, chunk in enumerate(chunks):
    digest = hashlib.sha1("\n".join(chunk).encode()).hexdigest()[:16]
    table.update(zip(chunk, np.load(os.path.join(cache_dir, f"chunk-{i:05d}-{digest}.npy"))))
  return table


def _rewrite_shard(shard: str, table: dict[str, np.ndarray]) -> int:
  with tf.io.TFRecordWriter(shard + ".tmp") as writer:
    count = 0
    for record in tfrecords.iterate_records([shard]):
      record["teacher_embedding"] = table[record["text"]]
      writer.write(tfrecords.serialize(record))
      count += 1
  os.replace(shard + ".tmp", shard)
  return count


def precompute(config: ml_collections.ConfigDict, splits: tuple[str, ...]) -> dict:
  """Adds teacher embeddings to every listed split; returns counts. Idempotent and resumable."""
  shards = {s: layout.list_shards(config.data_dir, s) for s in splits}
  todo = [f for s in splits for f in shards[s] if not _has_embeddings(f)]
  stats_path = layout.teacher_stats_path(config.data_dir)
  if todo or not os.path.exists(stats_path):
    teacher = teacher_lib.from_config(config)
    split_texts = {s: _texts(shards[s]) for s in splits}
    texts = sorted(set().union(*split_texts.values()))
    logging.info("teacher %s: %d distinct transcripts to embed", teacher.name, len(texts))
    table = _embed_chunks(
      texts, teacher, layout.teacher_cache_dir(config.data_dir), config.teacher.batch_size
    )
    mine = [f for i, f in enumerate(todo) if i % jax.process_count() == jax.process_index()]
    for shard in tqdm.tqdm(mine, desc="write embeddings", unit="shard"):
      _rewrite_shard(shard, table)
    if jax.process_index() == 0:
      # Centring targets uses the mean over distinct training transcripts.
      mean = np.mean([table[t] for t in sorted(set(split_texts["train"]))], axis=0)
      with utils.atomic_write(stats_path, "wb") as f:
        np.savez(f, mean=mean, dim=teacher.dim, name=teacher.name)
    # After the stats, so no process goes on to train before they exist.
    multihost_utils.sync_global_devices("teacher shards and stats")
  return verify(config, splits)


def verify(config: ml_collections.ConfigDict, splits: tuple[str, ...]) -> dict:
  """Every written example holds exactly one embedding, else a RuntimeError that says which."""
  counts = {}
  for split in splits:
    expected = layout.read_summary(config.data_dir, split)["written"]
    records = list(tfrecords.iterate_records(layout.list_shards(config.data_dir, split)))
    missing = [r["id"] for r in records if r["teacher_embedding"] is None]
    if missing or len(records) != expected:
      raise RuntimeError(
        f"split {split}: {len(records)} examples (summary says {expected}), {len(missing)} "
        f"without a teacher embedding (e.g. {missing[:3]}); rerun stalign.precompute"
      )
    counts[split] = len(records)
  return counts


def main(argv):
  del argv
  config = flags.FLAGS.config
  print(precompute(config, ("train", "valid", config.eval.split)))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file (see configs/).", lock_config=True)
  flags.mark_flags_as_required(["config"])
  cli.run(main)
