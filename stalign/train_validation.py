"""The valid split during training: its loss and CTC error at checkpoints, evaluator figures.

Evaluation in training has one reader (`input_pipeline.eval_batches` over the
valid split) and one compiled program (`train_steps.eval_step`, passed in
jitted as `jit_eval`): `run_validation` sums its losses and CTC errors, and
`run_evaluators` hands its embeddings to the evaluators through
`evaluators.split`, the seam the evaluation driver uses with an `api.Model`. So
training imports neither the inference API nor the evaluation CLI
(`tests/test_architecture.py`).
"""

from collections.abc import Iterator

from flax import nnx
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from stalign import evaluators
from stalign import input_pipeline
from stalign import sharding
from stalign import train_steps
from stalign import utils
from stalign.data import text as text_lib
from stalign.evaluators import split as split_lib


def valid_batches(config: ml_collections.ConfigDict, teacher_dim: int) -> Iterator[dict]:
  """The valid split in global batches, whole on every process: what training evaluates on."""
  return input_pipeline.eval_batches(config, "valid", teacher_dim, config.input.batch_size)


def evaluate_batch(
  jit_eval: jax.stages.Wrapped,
  params: nnx.State,
  whole: dict,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
) -> dict:
  """`jit_eval` (`train_steps.eval_step`) on one batch that every process holds whole, each
  feeding its rows."""
  with sharding.rules_context(mesh, config.sharding_rules):
    batch = sharding.global_batch(
      input_pipeline.process_rows(train_steps.device_batch(whole)), mesh
    )
    return jit_eval(params, batch)


def run_validation(
  jit_eval: jax.stages.Wrapped,
  params: nnx.State,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  teacher_dim: int,
) -> dict:
  """Loss and CTC error rate over the whole valid split (padding rows excluded).

  Every process reads the whole split in global batches and feeds its own rows,
  so the figures do not depend on the process count. `valid_loss` averages each
  batch's loss weighted by its utterances; it picks the best checkpoint.
  `valid_cer` is the character (or phoneme) error rate of greedy CTC decoding
  over every valid utterance.
  """
  loss_sum = rows = errors = reference_length = 0.0
  for whole in valid_batches(config, teacher_dim):
    out = evaluate_batch(jit_eval, params, whole, config, mesh)
    loss_sum += float(out["loss_sum"])
    rows += float(out["rows"])
    ids = np.asarray(multihost_utils.process_allgather(out["ctc_ids"], tiled=True))
    for hyp, labels, n, real in zip(ids, whole["ctc_labels"], whole["num_labels"], whole["valid"]):
      if real:
        # Targets longer than their bucket can align are cut (and left out of the CTC loss).
        n = min(int(n), len(labels))
        errors += text_lib.edit_distance(text_lib.collapse(hyp), list(labels[:n]))
        reference_length += n
  return {"valid_loss": loss_sum / max(rows, 1), "valid_cer": errors / max(reference_length, 1)}


def run_evaluators(
  jit_eval: jax.stages.Wrapped,
  params: nnx.State,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  teacher_dim: int,
  target_mean: np.ndarray,
) -> dict:
  """The `eval.during_training` evaluators on the valid split, as flat `valid/...` scalars.

  The split is read and embedded as `run_validation` reads and runs it (one
  reader, one compiled program), then bundled by `evaluators.split.embed`, the
  seam `stalign.evaluate` embeds its splits through with an `api.Model`. The
  teacher embeddings come from the data stage's table, so no teacher is loaded.
  """

  def embed_speech(whole: dict) -> tuple[np.ndarray, np.ndarray]:
    out = evaluate_batch(jit_eval, params, whole, config, mesh)
    gathered = multihost_utils.process_allgather((out["embedding"], out["layers"]), tiled=True)
    return tuple(np.asarray(x) for x in gathered)

  # The space the student was trained to match, as the evaluation driver compares in.
  centre = target_mean if config.loss.centre_targets else np.zeros_like(target_mean)
  emb = split_lib.embed(valid_batches(config, teacher_dim), embed_speech, None, centre)
  results = {name: evaluators.get(name)(emb) for name in config.eval.during_training}
  return {
    f"valid/{k}": v for k, v in utils.flatten_dict(results).items() if isinstance(v, (int, float))
  }
