"""The frozen text teacher: batched, length-bucketed sentence embeddings.

The student learns to land on the teacher's embedding of each transcript, so
the teacher has to reproduce sentence-transformers number for number:
tests/test_teacher.py holds it to cosine >= 0.9999 against
sentence-transformers itself on all-MiniLM-L6-v2. The encoder is
`stalign.models.bert`, read from disk by `stalign.models.hf_loader`; this file
adds what makes it fast and cheap to compile: sorting by token count, padding
to a few fixed shapes (`round_length`, `round_rows`) and splitting batches
over a device mesh. `load` takes a folder, `from_config` the run's config.

Two truncation lengths: training targets are cut at the config's
`teacher.max_tokens` (transcripts are short, and the stored targets are what
the student learnt), while inference cuts where sentence-transformers does
(`hf_loader.max_seq_length`, 256 for all-MiniLM-L6-v2), so a text embedded
by stalign equals the vector an existing sentence-transformers index holds.
"""

import functools
import os
from typing import Sequence

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np
import tokenizers

from stalign import sharding
from stalign import utils
from stalign.models import bert
from stalign.models import hf_loader

# Padded sequence lengths are multiples of this up to 32 tokens, then of an
# eighth of the next power of two (`round_length`), so jit sees few shapes.
LENGTH_QUANTUM = 4


def round_length(num_tokens: int, max_tokens: int) -> int:
  """Padded length for a batch, from a small fixed set so jit compiles little.

  The encoder is compute-bound on CPU, so padding costs time in proportion.
  Four steps per doubling keep it under a quarter beyond 32 tokens and fine
  below, where most sentences are, with 16 shapes up to 128 tokens (4, 8, ...,
  32, 40, ..., 64, 80, ..., 128). Steps of 16 padded the demo corpus by 66%,
  these by 24%.
  """
  octave = 1 << int(max(num_tokens - 1, 0)).bit_length()
  step = max(LENGTH_QUANTUM, octave // 8)
  return min(utils.round_up(num_tokens, step), max_tokens)


def round_rows(num_rows: int, batch_size: int, multiple: int = 1) -> int:
  """Padded batch rows: full batches stay put, the last one goes to a power of 2.

  `multiple` (the device count) keeps the batch divisible across the mesh.
  """
  rows = min(1 << (num_rows - 1).bit_length(), batch_size)
  return utils.round_up(rows, multiple)


class Teacher:
  """Text -> embedding, batched and length-bucketed around a jitted `encode`."""

  def __init__(
    self,
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokenizer: tokenizers.Tokenizer,
    pooling: bert.Pooling,
    *,
    hidden_size: int,
    max_tokens: int,
    name: str,
    mesh: jax.sharding.Mesh | None = None,
  ):
    self.graphdef = graphdef
    self.pooling = pooling
    self.tokenizer = tokenizer
    self.max_tokens = max_tokens
    self.name = name
    self.dim = hidden_size * len(pooling.modes)
    self.mesh = mesh
    if mesh is None:
      self._batch_sharding = None
      self.state = jax.device_put(state)
    else:
      # The teacher is small: replicate it and split the batch over all
      # devices. Auto axes let XLA propagate that split with no per-op
      # annotations, whatever axis types the caller's mesh was made with.
      auto = jax.sharding.Mesh(
        mesh.devices,
        mesh.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names),
      )
      self._batch_sharding = jax.sharding.NamedSharding(
        auto, jax.sharding.PartitionSpec(mesh.axis_names)
      )
      self.state = jax.device_put(
        state, jax.sharding.NamedSharding(auto, jax.sharding.PartitionSpec())
      )
    self.apply = jax.jit(functools.partial(bert.encode, graphdef, pooling=pooling))

  def embed(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """float32 (len(texts), dim) embeddings, in the order of `texts`.

    On CPU the encoder is compute-bound, so time goes with padded tokens:
    sorting by token count before batching keeps padding low, and every batch
    is padded to `round_length` x `round_rows` shapes so jit compiles few.
    """
    encodings = self.tokenizer.encode_batch(list(texts))
    lengths = np.array([len(e.ids) for e in encodings], np.int64)
    order = np.argsort(lengths, kind="stable")
    multiple = 1 if self.mesh is None else self.mesh.size
    pending = []
    for start in range(0, len(order), batch_size):
      index = order[start : start + batch_size]
      ids = np.zeros(
        (
          round_rows(len(index), batch_size, multiple),
          round_length(lengths[index[-1]], self.max_tokens),
        ),
        np.int32,
      )
      mask = np.zeros_like(ids)
      for row, i in enumerate(index):
        ids[row, : lengths[i]] = encodings[i].ids
        mask[row, : lengths[i]] = 1
      if self._batch_sharding is not None:
        ids, mask = jax.device_put((ids, mask), self._batch_sharding)
      # Dispatch is asynchronous: tokenising the next batch overlaps compute.
      pending.append((index, self.apply(self.state, ids, mask)))
    out = np.zeros((len(encodings), self.dim), np.float32)
    for index, embeddings in pending:
      out[index] = np.asarray(embeddings)[: len(index)]
    return out


def load(
  path: str = "", max_tokens: int | None = None, mesh: jax.sharding.Mesh | None = None
) -> Teacher:
  """Loads a sentence-transformers folder; "" means the packaged MiniLM.

  Args:
    path: local sentence-transformers folder, or "" for
      `hf_loader.default_teacher_path`.
    max_tokens: truncation length including [CLS] and [SEP]; None truncates
      where sentence-transformers does (`hf_loader.max_seq_length`: 256 for
      all-MiniLM-L6-v2).
    mesh: optional device mesh; the batch is split over all of its devices.

  Returns:
    A ready `Teacher`.
  """
  model_dir = path or hf_loader.default_teacher_path()
  transformer_dir, pooling = hf_loader.load_pooling(model_dir)
  graphdef, state, config = hf_loader.load_bert(transformer_dir)
  if max_tokens is None:
    max_tokens = hf_loader.max_seq_length(transformer_dir, config)
  if not 2 <= max_tokens <= config.max_positions:
    raise ValueError(
      f"max_tokens={max_tokens} must be in [2, {config.max_positions}] (max_position_embeddings)"
    )
  tokenizer = hf_loader.load_tokenizer(transformer_dir, max_tokens)
  name = os.path.basename(os.path.normpath(model_dir)) if path else hf_loader.DEFAULT_NAME
  logging.info(
    "teacher %s: %d layers, dim %d, pooling %s%s, max %d tokens",
    name,
    config.num_layers,
    config.hidden_size,
    pooling.modes,
    " + normalize" if pooling.normalize else "",
    max_tokens,
  )
  return Teacher(
    graphdef,
    state,
    tokenizer,
    pooling,
    hidden_size=config.hidden_size,
    max_tokens=max_tokens,
    name=name,
    mesh=mesh,
  )


def from_config(config: ml_collections.ConfigDict, inference: bool = False) -> Teacher:
  """The configured teacher, each batch split over this process's devices.

  Training targets (`inference=False`) are truncated at `teacher.max_tokens`;
  inference truncates where sentence-transformers does (module docstring).
  Each process embeds its own texts (precompute splits the chunks by process),
  so the mesh holds local devices only (`sharding.local_mesh`).
  """
  max_tokens = None if inference else config.teacher.max_tokens
  return load(config.teacher.path, max_tokens=max_tokens, mesh=sharding.local_mesh())
