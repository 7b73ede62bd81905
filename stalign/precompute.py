"""Teacher embeddings, computed once per distinct transcript and stored once, as a table.

The teacher is frozen, so running it inside every training step would only
cost time and memory. The distinct transcripts of every split (from the
shards' markers: no record is read) are embedded in large length-bucketed
batches and saved chunk by chunk (a killed run keeps its finished chunks);
then process 0 writes them as one table beside the shards
(`layout.teacher_table_path`), which the readers join to each record by its
transcript. No shard is rewritten: transcripts repeat across records and
splits, and a shard rewritten to carry its embeddings would be written twice.

Several processes split the chunks by process index, each running the teacher
on its own devices. They need no shared POSIX disk: every chunk, the table and
the statistics are written to the `data_dir` URL through `stalign.fs`, and a
host reads what another wrote only after a barrier (`sync_global_devices`)
that the writer passes once its files are complete.

  python -m stalign.precompute --config=configs/demo.py
"""

from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np

from stalign import chunks
from stalign import cli
from stalign import config as config_lib
from stalign import fs
from stalign.data import layout
from stalign.models import teacher as teacher_lib

CHUNK = 4096


def _embed_chunks(texts: list[str], teacher, cache_dir: str, batch_size: int) -> chunks.Cache:
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
  return cache


def _is_done(config: ml_collections.ConfigDict, texts: set[str]) -> bool:
  data_dir = config.data_dir
  if not all(
    fs.exists(path)
    for path in (
      layout.teacher_table_path(data_dir),
      layout.text_bank_path(data_dir),
      layout.teacher_stats_path(data_dir),
    )
  ):
    return False
  return texts <= set(layout.read_teacher_table(data_dir, embeddings=False)[0])


def precompute(config: ml_collections.ConfigDict, splits: tuple[str, ...]) -> dict:
  """Embeds every split's distinct transcripts; returns each split's example count.

  Idempotent and resumable; a table that already covers every transcript is kept.
  """
  split_texts = {s: layout.split_texts(config.data_dir, s) for s in splits}
  texts = sorted(set().union(*split_texts.values()))
  if not _is_done(config, set(texts)):
    teacher = teacher_lib.from_config(config)
    logging.info("teacher %s: %d distinct transcripts to embed", teacher.name, len(texts))
    cache = _embed_chunks(
      texts, teacher, layout.teacher_cache_dir(config.data_dir), config.teacher.batch_size
    )
    if jax.process_index() == 0:
      embeddings = np.concatenate([cache.read(i)["embeddings"] for i in range(len(cache))])
      with fs.atomic_write(layout.teacher_table_path(config.data_dir), "wb") as f:
        np.savez(f, texts=np.array(texts), embeddings=embeddings)
      # Centring targets uses the mean over distinct training transcripts.
      # The same rows are the bank of loss.bank_weight, written first: the stats mark the end.
      rows = np.searchsorted(texts, sorted(split_texts["train"]))
      bank = embeddings[rows]
      with fs.atomic_write(layout.text_bank_path(config.data_dir), "wb") as f:
        np.save(f, bank)
      with fs.atomic_write(layout.teacher_stats_path(config.data_dir), "wb") as f:
        np.savez(f, mean=bank.mean(axis=0), dim=teacher.dim, name=teacher.name)
    # After the stats, so no process goes on to train before they exist.
    multihost_utils.sync_global_devices("teacher table and stats")
  return {s: layout.read_summary(config.data_dir, s)["written"] for s in splits}


def main(argv: list[str]) -> None:
  cli.check_no_arguments(argv, cli.CONFIG_HINT)
  config = config_lib.validate_config(flags.FLAGS.config)
  print(precompute(config, layout.splits(config)))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file (see configs/).", lock_config=True)
  flags.mark_flags_as_required(["config"])
  cli.run(main)
