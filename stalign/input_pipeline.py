"""tf.data input: an epoch plan from the record index, length buckets, static shapes, prefetch.

Training batches are planned, not streamed: `epoch_plan` computes an epoch's
order, length buckets and batches from the split's `RecordIndex` (each
record's shard, offset and frames) and (seed, epoch) alone, and the pipeline
then reads each batch's records at their offsets. Resuming at batch k of an
epoch therefore plans that epoch and starts reading at batch k: its cost does
not grow with k (replaying k batches, as a streamed input must, does).

The plan is of global batches, the same on every process; each process reads
only its own rows of each, so the processes' rows together are exactly the
batch one process would see, every process pads to the same bucket at every
step, and no data moves between hosts. Utterances are grouped by length and
padded up to a small set of bucket lengths: padding stays low and `jax.jit`
compiles once per bucket. Every batch carries the epoch it came from, so the
loop can save `(epoch, batches seen in it)` with a checkpoint. A record's
teacher embedding is joined to it here, by its transcript, from the table the
data stage stores once per distinct transcript (`layout.read_teacher_table`).
"""

import collections
from collections.abc import Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf

from stalign.data import features
from stalign.data import layout
from stalign.data import tfrecords
from stalign.models import frontend

_READ_AHEAD_BYTES = 2 << 30  # What the training input may hold in read-ahead buffers.


def _keep_tf_off_accelerators() -> None:
  """Data loading must not grab the accelerator memory or threads the step needs."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices in this process.
    logging.warning("TensorFlow was initialised before the input pipeline; it may use the GPU")


def _records(path: tf.Tensor) -> tf.data.Dataset:
  """A shard's serialized records, read through `stalign.fs` (so `gs://` data works in tests)."""
  return tf.data.Dataset.from_generator(
    lambda p: tfrecords.read_raw(p.decode()),
    args=(path,),
    output_signature=tf.TensorSpec([], tf.string),
  )


def max_label_length(config: ml_collections.ConfigDict) -> int:
  """Longest CTC target that the longest bucket could align (longer ones are cut)."""
  return features.ctc_frames(features.bucket_lengths(config)[-1], config.model)


def _teacher_lookup(config: ml_collections.ConfigDict, teacher_dim: int):
  """transcript (tf.string) -> its teacher embedding [teacher_dim], from the data stage's table."""
  texts, embeddings = layout.read_teacher_table(config.data_dir)
  if embeddings.shape[1] != teacher_dim:
    raise ValueError(
      f"{layout.teacher_table_path(config.data_dir)} holds {embeddings.shape[1]}-wide "
      f"embeddings, the run's teacher {teacher_dim}-wide; rebuild it with "
      f"`{layout.PREPARE_COMMAND}`"
    )
  rows = tf.lookup.StaticHashTable(
    tf.lookup.KeyValueTensorInitializer(
      tf.constant(texts, tf.string), tf.range(len(texts), dtype=tf.int64)
    ),
    default_value=-1,
  )
  table = tf.constant(embeddings, tf.float32)

  def lookup(text):
    row = rows.lookup(text)
    check = tf.debugging.assert_non_negative(
      row,
      message=f"a transcript missing from {layout.teacher_table_path(config.data_dir)}: "
      f"rebuild the data with `{layout.PREPARE_COMMAND}`",
    )
    with tf.control_dependencies([check]):
      return tf.gather(table, row)

  return lookup


def _parse_fn(config: ml_collections.ConfigDict, teacher_dim: int):
  """`parse(raws, frames)`: serialized records [n] -> the fields a step reads, as one batch.

  One call parses a whole planned batch (one length bucket): each record's features are
  zero-padded to `frames` frames as they are decoded, and its CTC targets cut or padded to the
  most labels those frames can align (`features.ctc_frames`), so no per-record step or padding
  pass follows. `frames=None` keeps the records' own length, which must then be the same for all
  (evaluation parses one record at a time and pads in its length buckets). `num_labels` counts a
  record's targets up to the most the longest bucket aligns: longer ones are masked out of the
  loss.
  """
  num_mels = frontend.feature_dim(config.features)
  max_labels = max_label_length(config)
  spec = {
    "text": tf.io.FixedLenFeature([], tf.string),
    "features": tf.io.FixedLenFeature([], tf.string),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
    "ctc_labels": tf.io.RaggedFeature(tf.int64),
    "duration": tf.io.FixedLenFeature([], tf.float32),
  }
  teacher = _teacher_lookup(config, teacher_dim) if teacher_dim else None

  def parse(raws, frames=None):
    ex = tf.io.parse_example(raws, spec)
    bytes_per_frame = num_mels * 2  # float16
    fixed = None if frames is None else frames * bytes_per_frame
    # As uint16, bit-cast to float16: the padding decoder has no float16 of its own.
    feats = tf.bitcast(tf.io.decode_raw(ex["features"], tf.uint16, fixed_length=fixed), tf.float16)
    feats = tf.cast(tf.reshape(feats, [tf.shape(raws)[0], -1, num_mels]), tf.float32)
    labels = tf.cast(ex["ctc_labels"], tf.int32)
    # The most labels `frames` can align: plain arithmetic, so a tensor works as an int does.
    width = max_labels if frames is None else features.ctc_frames(frames, config.model)
    out = {
      "features": feats,
      "num_frames": tf.cast(ex["num_frames"], tf.int32),
      "ctc_labels": labels.to_tensor(shape=tf.stack([tf.shape(raws)[0], width])),
      "num_labels": tf.minimum(tf.cast(labels.row_lengths(), tf.int32), max_labels),
      "duration": ex["duration"],
      "text": ex["text"],
    }
    if teacher:
      out["teacher"] = teacher(ex["text"])
    return out

  return parse


def _bucketed(
  ds: tf.data.Dataset, config: ml_collections.ConfigDict, batch_size: int, drop_remainder: bool
) -> tf.data.Dataset:
  lengths = features.bucket_lengths(config)
  return ds.bucket_by_sequence_length(
    element_length_func=lambda ex: ex["num_frames"],
    bucket_boundaries=[b + 1 for b in lengths[:-1]],
    bucket_batch_sizes=[batch_size] * len(lengths),
    pad_to_bucket_boundary=False,
    padded_shapes=None,
    drop_remainder=drop_remainder,
  ).map(lambda b: _pad_to_bucket(b, lengths, config.model))


def _pad_to_bucket(batch: dict, lengths: tuple[int, ...], model: ml_collections.ConfigDict) -> dict:
  """Pads the time axis up to the smallest bucket length that holds the batch.

  CTC targets are cut to the most labels that bucket's frames can align
  (longer ones are masked out of the loss anyway): the CTC lattice, and its
  cost, scale with the label axis, so short buckets stay cheap.
  """

  def padded_sizes(frames):
    target = features.padded_length(int(frames), lengths, model.subsample)
    return np.array([target, features.ctc_frames(target, model)], np.int32)

  frames = tf.shape(batch["features"])[1]
  sizes = tf.numpy_function(padded_sizes, [frames], tf.int32, stateful=False)
  target, max_labels = sizes[0], sizes[1]
  batch["features"] = tf.pad(batch["features"], [[0, 0], [0, target - frames], [0, 0]])
  batch["ctc_labels"] = batch["ctc_labels"][:, :max_labels]
  return batch


def local_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(
      f"batch size {global_batch} is not divisible by {jax.process_count()} processes"
    )
  return global_batch // jax.process_count()


def record_index(config: ml_collections.ConfigDict, split: str) -> tfrecords.RecordIndex:
  """The split's record index, written by the data stage beside its shards."""
  return tfrecords.read_index(config.data_dir, split)


def _padded_lengths(index: tfrecords.RecordIndex, config: ml_collections.ConfigDict) -> np.ndarray:
  """Each record's bucket, as the length it is padded to (`features.padded_length`)."""
  lengths = features.bucket_lengths(config)
  frames = np.unique(index.num_frames)
  padded = [features.padded_length(int(n), lengths, config.model.subsample) for n in frames]
  return np.array(padded, np.int64)[np.searchsorted(frames, index.num_frames)]


def batches_per_epoch(index: tfrecords.RecordIndex, config: ml_collections.ConfigDict) -> int:
  """Full global batches in every epoch: each bucket's records, whole batches of them.

  The same for every epoch (a bucket's size does not depend on the order), so
  a position `(epoch, batch)` maps to a global batch count and back.
  """
  _, counts = np.unique(_padded_lengths(index, config), return_counts=True)
  return int((counts // config.input.batch_size).sum())


def epoch_plan(
  index: tfrecords.RecordIndex, config: ml_collections.ConfigDict, epoch: int
) -> np.ndarray:
  """The record numbers of each global batch of `epoch`, [batches, global batch], in order.

  A function of the index, the config and (seed, epoch) only, so every
  process and every resume computes the same plan. The order is what a
  streamed input with a shuffle buffer gives: the shards in a new order each
  epoch, read front to back, records shuffled within windows of
  `input.shuffle_buffer` (here a window costs no memory, and one as large as
  the split shuffles it whole). Each record then joins its length bucket, and
  a batch is emitted when its bucket fills, as `bucket_by_sequence_length`
  does; buckets' incomplete last batches are dropped. Costs O(records log
  records) whatever the epoch or the batch a run resumes at.
  """
  rng = np.random.default_rng((config.seed, epoch))
  starts = np.searchsorted(index.shard, np.arange(len(index.files) + 1))
  order = np.concatenate(
    [np.arange(starts[s], starts[s + 1]) for s in rng.permutation(len(index.files))]
  )
  window = np.arange(order.size) // max(1, config.input.shuffle_buffer)
  order = order[np.lexsort((rng.random(order.size), window))]
  padded = _padded_lengths(index, config)[order]
  batch = config.input.batch_size
  batches = [
    at[: at.size // batch * batch].reshape(-1, batch)
    for at in (np.flatnonzero(padded == length) for length in np.unique(padded))
  ]
  batches = np.concatenate(batches + [np.zeros((0, batch), np.int64)])
  return order[batches[np.argsort(batches[:, -1])]]  # In the order the batches fill.


def train_iterator(
  config: ml_collections.ConfigDict, split: str, teacher_dim: int, position: dict | None = None
) -> Iterator[dict]:
  """Endless shuffled batches (this process's rows) as numpy dicts, starting after `position`.

  `position = {"epoch": e, "batch": k}` resumes at the (k+1)-th batch of epoch
  e, reading nothing before it (`epoch_plan`).
  """
  _keep_tf_off_accelerators()
  index = record_index(config, split)
  if not batches_per_epoch(index, config):
    raise ValueError(
      f"no length bucket of split {split!r} holds a full batch of {config.input.batch_size} "
      f"({index.num_frames.size} records): lower input.batch_size or use fewer buckets"
    )
  parse = _parse_fn(config, teacher_dim)
  batch_size = local_batch_size(config.input.batch_size)
  rows = slice(jax.process_index() * batch_size, (jax.process_index() + 1) * batch_size)
  start_epoch = position["epoch"] if position else 0
  skip = position["batch"] if position else 0

  padded = _padded_lengths(index, config)

  def plan(epoch):
    """This process's rows of each planned batch of `epoch`, and the length it is padded to."""
    batches = epoch_plan(index, config, int(epoch))[skip if epoch == start_epoch else 0 :]
    return batches[:, rows], padded[batches[:, 0]]  # A planned batch is one length bucket.

  def epoch_batches(epoch):
    batches, frames = tf.numpy_function(plan, [epoch], (tf.int64, tf.int64), stateful=False)
    batches = tf.ensure_shape(batches, [None, batch_size])
    return tf.data.Dataset.from_tensor_slices((tf.fill(tf.shape(frames), epoch), batches, frames))

  def read(epoch, batch, frames):
    raw = tf.numpy_function(
      lambda r: np.array(index.read(r), object), [batch], tf.string, stateful=False
    )
    out = parse(tf.ensure_shape(raw, [batch_size]), tf.cast(frames, tf.int32))
    return {**out, "epoch": tf.fill([batch_size], epoch)}

  # The plan is made in the graph, one Python call an epoch: a Python generator of batches
  # (`from_generator`) waited for the interpreter lock while the reads held it, and halved the
  # reader's rate (docs/performance.md).
  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_batches)
  ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).prefetch(config.input.prefetch)
  options = tf.data.Options()
  options.deterministic = True
  # tf.data's autotuner otherwise buffers read-ahead batches up to half the host's memory: with
  # Whisper frames (512 channels every 20 ms, ~100 MB a batch) that grew a CPU run past 8 GB.
  options.autotune.ram_budget = _READ_AHEAD_BYTES
  ds = ds.with_options(options)
  return ds.as_numpy_iterator()


def eval_batches(
  config: ml_collections.ConfigDict, split: str, teacher_dim: int, batch_size: int
) -> Iterator[dict]:
  """Every example of a split exactly once, padded to full static batches (see `valid`).

  Evaluation reads all shards on every process: the embeddings are small and
  every process then holds the whole gallery for the metrics. Besides what a
  step reads, each row carries its record's `id` and `labels` (JSON) and its
  `position` in the split's files, so the evaluators' bundle
  (`evaluators.split.embed`) can be built from these same batches.
  """
  _keep_tf_off_accelerators()
  files = layout.list_shards(config.data_dir, split)
  parse = _parse_fn(config, teacher_dim)
  described = {k: tf.io.FixedLenFeature([], tf.string) for k in ("id", "labels")}

  def parse_row(position, raw):
    record = {k: v[0] for k, v in parse(raw[None]).items()}
    return {**record, **tf.io.parse_single_example(raw, described), "position": position}

  ds = tf.data.Dataset.from_tensor_slices(files).flat_map(_records).enumerate().map(parse_row)
  ds = _bucketed(ds, config, batch_size, drop_remainder=False).prefetch(2)
  for batch in ds.as_numpy_iterator():
    n = batch["num_frames"].shape[0]
    batch = {k: _pad_rows(v, batch_size) for k, v in batch.items()}
    batch["valid"] = np.arange(batch_size) < n
    yield batch


def process_rows(batch: dict) -> dict:
  """This process's rows of a batch every process holds whole (from `eval_batches`).

  Assembled with `sharding.global_batch`, the processes' rows make up exactly
  the batch one process would see, so a metric over a split does not depend on
  the number of processes.
  """
  rows = local_batch_size(next(iter(batch.values())).shape[0])
  start = jax.process_index() * rows
  return {k: v[start : start + rows] for k, v in batch.items()}


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return (
    np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)])
    if x.shape[0] < rows
    else x
  )


def padding_efficiency(
  config: ml_collections.ConfigDict, split: str, num_batches: int
) -> tuple[float, dict[int, int]]:
  """Fraction of real (non-padded) feature frames in the first `num_batches` training batches.

  Measured on what `train_iterator` yields, so it accounts for the bucketing and
  the rounding to the frame stacking, and is the number to tune
  `input.bucket_boundaries` on: each padded frame costs as much compute as a
  real one. Also returns how many batches had each padded length; every
  distinct length is one more jit compilation of the train step.
  """
  it = train_iterator(config, split, teacher_dim=0)
  real = padded = 0
  lengths = collections.Counter()
  for _ in range(num_batches):
    batch = next(it)
    rows, length = batch["features"].shape[:2]
    real += int(batch["num_frames"].sum())
    padded += rows * length
    lengths[length] += 1
  return real / padded, dict(sorted(lengths.items()))
