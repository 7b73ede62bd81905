"""Evaluates a trained run: embeds a split once, runs the configured evaluators, writes the report.

  python -m stalign.evaluate --config=configs/demo.py --workdir=runs/demo

The student's embeddings are compared with the teacher's in the space the
student was trained to match (teacher minus the training mean when
`loss.centre_targets`), which is the space users query.
"""
import json
import os

from absl import app
from absl import flags
from absl import logging
from flax import nnx
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from stalign import checkpoints
from stalign import evaluators
from stalign import input_pipeline
from stalign import report
from stalign import train


def load_student(config: ml_collections.ConfigDict, workdir: str):
  """(graphdef, params) of the latest checkpoint in `workdir`."""
  dim, _ = train.teacher_stats(config)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: train.build_student(config, dim)))
  return graphdef, checkpoints.restore_params(workdir, abstract)


def embed_split(config: ml_collections.ConfigDict, graphdef, params, split: str) -> evaluators.Embeddings:
  dim, mean = train.teacher_stats(config)

  @jax.jit
  def forward(params, features, num_frames):
    model = nnx.merge(graphdef, params)
    model.eval()
    return model(features, num_frames)["embedding"]

  speech, teacher, texts = [], [], []
  for batch in input_pipeline.eval_batches(config, split, dim, config.eval.batch_size):
    keep = batch["valid"]
    speech.append(np.asarray(forward(params, batch["features"], batch["num_frames"]))[keep])
    teacher.append(batch["teacher"][keep])
    texts += [t.decode() for t in batch["text"][keep]]
  speech, teacher = np.concatenate(speech), np.concatenate(teacher)
  gallery, first, index = np.unique(np.array(texts), return_index=True, return_inverse=True)
  raw = teacher[first]
  target = raw - mean if config.loss.centre_targets else raw
  return evaluators.Embeddings(speech=speech, text=target, text_index=index, texts=list(gallery),
                               raw_text=raw)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  graphdef, params = load_student(config, workdir)
  emb = embed_split(config, graphdef, params, config.eval.split)
  results = {"split": config.eval.split, "utterances": len(emb.speech)}
  for name in config.eval.evaluators:
    logging.info("running evaluator %s", name)
    results[name] = evaluators.get(name)(emb)
  report.write(workdir, results)
  return results


def main(argv):
  del argv
  results = evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  print(report.headline(results))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file (see configs/).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
