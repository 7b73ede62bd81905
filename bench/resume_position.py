"""Time to reach training batch k when a run resumes: planned from the record index vs replayed.

A streamed input can only reach batch k by reading and decoding the k
batches before it (`skip`), so resuming late in a long run costs as much as
that stretch of training's input. The planned input (`input_pipeline.epoch_plan`)
computes batch k's records from the split's record index and (seed, epoch)
and reads only those, so the cost does not depend on k.

- `real`: the training input on real data (the demo's, `make demo`), side by
  side (`_common.alternate`): a fresh iterator resumed at batch k, until its
  first batch; and one started at batch 0 that reads k batches and then
  batch k, which is what replay costs. Replay beyond `replay_ks` is not run
  but extrapolated from the largest one, linearly (labelled an estimate). The
  batch each reaches is checked to be the same.
- `librispeech_scale`: the plan alone on a synthetic index the size of
  LibriSpeech 960 h (281,241 utterances, 256 shards, lengths drawn around
  12.3 s) under `configs/tpu_multitask.py`: the index math a resume does
  there, at each k.
"""

import os
from typing import Any

import ml_collections
import numpy as np

from bench import _common
from configs import demo
from configs import tpu_multitask
from stalign import input_pipeline
from stalign.data import layout
from stalign.data import tfrecords

KS = (10, 1_000, 100_000)
REPLAY_KS = (10, 1_000)  # Replaying 10^5 demo batches would take hours: extrapolated.
LIBRISPEECH_RECORDS = 281_241
LIBRISPEECH_SHARDS = 256


def _position(k: int, per_epoch: int) -> dict:
  return {"epoch": k // per_epoch, "batch": k % per_epoch}


def _real(
  config: ml_collections.ConfigDict, ks: tuple, replay_ks: tuple, repeats: int
) -> dict[str, Any]:
  teacher_dim, _ = layout.read_teacher_stats(config.data_dir)
  index = input_pipeline.record_index(config, "train")  # Built once here if the data lacks it.
  per_epoch = input_pipeline.batches_per_epoch(index, config)
  reached = {}

  def indexed(k):
    it = input_pipeline.train_iterator(config, "train", teacher_dim, _position(k, per_epoch))
    reached[("indexed", k)] = next(it)["features"]

  def replay(k):
    it = input_pipeline.train_iterator(config, "train", teacher_dim)
    for _ in range(k):
      next(it)
    reached[("replay", k)] = next(it)["features"]

  rows = {}
  for k in ks:
    fns = {"indexed": lambda k=k: indexed(k)}
    if k in replay_ks:
      fns["replay"] = lambda k=k: replay(k)
    seconds = _common.alternate(fns, repeats)
    rows[k] = {name: _common.median(s) for name, s in seconds.items()}
    if k in replay_ks:
      rows[k]["same_batch"] = bool(np.array_equal(reached[("indexed", k)], reached[("replay", k)]))
  longest = max(replay_ks)
  per_batch = rows[longest]["replay"] / (longest + 1)
  out = {
    "data_dir": config.data_dir,
    "records": int(index.num_frames.size),
    "global_batch": config.input.batch_size,
    "batches_per_epoch": per_epoch,
    "replay_seconds_per_batch": per_batch,
    "replay_estimate_formula": f"(k + 1) x replay seconds per batch, measured at k={longest}",
  }
  for k, row in rows.items():
    out[f"k={k}"] = {
      "indexed_seconds": row["indexed"],
      **(
        {"replay_seconds": row["replay"], "same_batch": row["same_batch"]}
        if "replay" in row
        else {"replay_seconds_estimate": (k + 1) * per_batch}
      ),
    }
  return out


def synthetic_index(records: int, shards: int, seed: int = 0) -> tfrecords.RecordIndex:
  """A record index with LibriSpeech-like lengths (no files behind it: for the plan alone)."""
  rng = np.random.default_rng(seed)
  seconds = np.clip(rng.normal(12.3, 3.5, records), 1.0, 35.0)
  return tfrecords.RecordIndex(
    path="synthetic",
    files=tuple(f"train-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)),
    shard=np.sort(rng.integers(0, shards, records)).astype(np.int32),
    offset=np.zeros(records, np.int64),
    length=np.zeros(records, np.int64),
    num_frames=(seconds * 100).astype(np.int32) + 1,  # 10 ms hop.
  )


def _librispeech_scale(ks: tuple, records: int, repeats: int) -> dict[str, Any]:
  config = tpu_multitask.get_config()
  index = synthetic_index(records, LIBRISPEECH_SHARDS)

  def locate(k):
    """What a resume computes before its first read: the epoch's plan, then row k of it."""
    per_epoch = input_pipeline.batches_per_epoch(index, config)
    position = _position(k, per_epoch)
    return input_pipeline.epoch_plan(index, config, position["epoch"])[position["batch"]]

  seconds = _common.alternate({k: lambda k=k: locate(k) for k in ks}, repeats)
  return {
    "records": records,
    "shards": LIBRISPEECH_SHARDS,
    "global_batch": config.input.batch_size,
    "batches_per_epoch": input_pipeline.batches_per_epoch(index, config),
    **{f"k={k}": {"plan_seconds": _common.median(s)} for k, s in seconds.items()},
  }


def run(
  config: ml_collections.ConfigDict | None = None,
  ks: tuple = KS,
  replay_ks: tuple = REPLAY_KS,
  synthetic_records: int = LIBRISPEECH_RECORDS,
  repeats: int = 3,
) -> dict[str, Any]:
  """Seconds to reach batch k, indexed vs replayed, on real data and at LibriSpeech scale."""
  config = config or demo.get_config()
  out = {"ks": list(ks), "librispeech_scale": _librispeech_scale(ks, synthetic_records, repeats)}
  if not os.path.exists(layout.summary_path(config.data_dir, "train")):
    out["real"] = {"skipped": f"no data in {config.data_dir}; run `make demo` first"}
    return out
  out["real"] = real = _real(config, ks, replay_ks, repeats)
  out["ratios"] = []
  for k in ks:
    row = real[f"k={k}"]
    measured = "replay_seconds" in row
    replay = row["replay_seconds"] if measured else row["replay_seconds_estimate"]
    out["ratios"].append(
      _common.ratio(
        f"resume at batch {k}: replay / indexed",
        replay / row["indexed_seconds"],
        ("replay s" if measured else "replay s (estimate)", replay),
        ("indexed s", row["indexed_seconds"]),
        "replay reads k batches; indexed plans one epoch and reads one batch",
      )
    )
  return out
