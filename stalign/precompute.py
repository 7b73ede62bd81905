"""Teacher embeddings, computed once per distinct transcript and stored in the TFRecords.

The teacher is frozen, so running it inside every training step would only
cost time and memory. Transcripts are deduplicated across all splits, embedded
in large length-bucketed batches and saved chunk by chunk (a killed run keeps
its finished chunks); then each shard is rewritten with a `teacher_embedding`
per example, and replaced whole (a rename, or one upload to an object store),
so a shard is either old or complete. At the end every example is checked to
hold exactly one embedding.

Several processes split the chunks and then the shards by process index, each
running the teacher on its own devices. They need no shared POSIX disk: every
chunk, shard and the statistics are written to the `data_dir` URL through
`stalign.fs`, and a host reads what another wrote only after a barrier
(`sync_global_devices`) that the writer passes once its files are complete.

  python -m stalign.precompute --config=configs/demo.py
"""

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np
import tqdm

from stalign import chunks
from stalign import cli
from stalign import config as config_lib
from stalign import fs
from stalign.data import layout
from stalign.data import tfrecords
from stalign.models import teacher as teacher_lib

CHUNK = 4096


def _has_embeddings(shard: str) -> bool:
  for raw in tfrecords.read_raw(shard):
    return tfrecords.deserialize(raw)["teacher_embedding"] is not None
  return True  # An empty shard needs nothing.


def _texts(files: list[str]) -> list[str]:
  """Transcripts only: reading just this field skips decoding every record's features."""
  return [tfrecords.read_text(raw) for path in files for raw in tfrecords.read_raw(path)]


def _embed_chunks(
  texts: list[str], teacher, cache_dir: str, batch_size: int
) -> dict[str, np.ndarray]:
  """Embeds `texts` (sorted, distinct) chunk by chunk; finished chunks are reused on restart."""
  cache = chunks.Cache(cache_dir, texts, CHUNK)
  cache.fill(
    lambda chunk: {"embeddings": teacher.embed(chunk, batch_size=batch_size)},
    indices=range(jax.process_index(), len(cache), jax.process_count()),
    desc="teacher",
    unit="text",
  )
  # Every host's chunks are whole objects (or renamed files) before any host reads them.
  multihost_utils.sync_global_devices("teacher chunks")
  table = {}
  for i, chunk in enumerate(cache.chunks):
    table.update(zip(chunk, cache.read(i)["embeddings"]))
  return table


def _rewrite_shard(shard: str, table: dict[str, np.ndarray]) -> int:
  def with_embeddings():
    for record in tfrecords.iterate_records([shard]):
      record["teacher_embedding"] = table[record["text"]]
      yield tfrecords.serialize(record)

  return tfrecords.write_shard(shard, with_embeddings())


def precompute(config: ml_collections.ConfigDict, splits: tuple[str, ...]) -> dict:
  """Adds teacher embeddings to every listed split; returns counts. Idempotent and resumable."""
  shards = {s: layout.list_shards(config.data_dir, s) for s in splits}
  todo = [f for s in splits for f in shards[s] if not _has_embeddings(f)]
  stats_path = layout.teacher_stats_path(config.data_dir)
  if todo or not fs.exists(stats_path) or not fs.exists(layout.text_bank_path(config.data_dir)):
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
      # The same rows are the bank of loss.bank_weight, written first: the stats mark the end.
      bank = np.stack([table[t] for t in sorted(set(split_texts["train"]))])
      with fs.atomic_write(layout.text_bank_path(config.data_dir), "wb") as f:
        np.save(f, bank)
      with fs.atomic_write(stats_path, "wb") as f:
        np.savez(f, mean=bank.mean(axis=0), dim=teacher.dim, name=teacher.name)
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE")

  config = config_lib.validate_config(flags.FLAGS.config)
  print(precompute(config, layout.splits(config)))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file (see configs/).", lock_config=True)
  flags.mark_flags_as_required(["config"])
  cli.run(main)
