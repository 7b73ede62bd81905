"""Sentences/s of the Flax teacher vs sentence-transformers, same sentences, same CPU.

A ratio is only meaningful when both sides see the same machine load, and this
machine is shared. So the reference runs as a long-lived server in a separate
torch interpreter (torch must stay out of stalign's venv), and repetitions
alternate between the two sides, in ABBA order so slow drift cancels; each
side's figure is the median of its repetitions. Both use the same threads, batch
size, truncation and sentences (the start of the demo corpus's training split).

Enable the reference with an interpreter that has torch and sentence-transformers:

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.13.0 sentence-transformers
  STALIGN_TORCH_PYTHON=/tmp/torchvenv/bin/python python -m bench.run teacher_throughput
"""

import json
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

from configs import demo
from stalign.data import grammar
from stalign.models import hf_loader
from stalign.models import teacher as teacher_lib

NUM_SENTENCES = 2000
REPEATS = 7
TORCH_PYTHON_ENV = "STALIGN_TORCH_PYTHON"
ENABLE_REFERENCE = (
  "python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 "
  f"sentence-transformers, then set {TORCH_PYTHON_ENV}=/tmp/torchvenv/bin/python"
)
_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_st_reference.py")


def bench_sentences(n: int = NUM_SENTENCES) -> list[str]:
  """Real training transcripts: their token lengths are what precompute sees."""
  # The grammar alone gives the corpus's first n: no audio, no other split needed.
  config = demo.get_config().corpus
  sizes = {"train": min(n, config.num_train)}
  return [text for text, _ in grammar.plan_sentences(config.seed, sizes)["train"]]


class _Reference:
  """The sentence-transformers server (see _st_reference.py), one encode per `time()`."""

  def __init__(
    self,
    python: str,
    model_dir: str,
    sentences_path: str,
    threads: int,
    max_tokens: int,
    batch_size: int,
    embeddings_path: str,
  ):
    env = dict(
      os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)
    )
    self._proc = subprocess.Popen(
      [
        python,
        _SERVER,
        model_dir,
        sentences_path,
        str(threads),
        str(max_tokens),
        str(batch_size),
        embeddings_path,
      ],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
    )
    self.version = self._read()

  def _read(self) -> str:
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(
        f"the sentence-transformers reference ({_SERVER}) exited with "
        f"{self._proc.wait()}; see its stderr above"
      )
    return line.strip()

  def time(self) -> float:
    self._proc.stdin.write("run\n")
    self._proc.stdin.flush()
    return float(self._read())

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait()


def run() -> dict[str, Any]:
  """Median sentences/s of both sides, their ratio, and how far their embeddings differ."""
  config = demo.get_config()
  batch_size, max_tokens = config.teacher.batch_size, config.teacher.max_tokens
  # XLA's CPU client uses one thread per schedulable core; torch gets the same.
  threads = len(os.sched_getaffinity(0))
  sentences = bench_sentences()
  teacher = teacher_lib.load(max_tokens=max_tokens)
  start = time.perf_counter()
  ours_embeddings = teacher.embed(sentences, batch_size)  # Compiles every padded shape.
  first_call_s = time.perf_counter() - start
  result = {
    "sentences": len(sentences),
    "batch_size": batch_size,
    "max_tokens": max_tokens,
    "threads": threads,
    "repeats": REPEATS,
    "ours_first_call_s": first_call_s,
    "length_quantum": teacher_lib.LENGTH_QUANTUM,
  }

  def time_ours() -> float:
    start = time.perf_counter()
    teacher.embed(sentences, batch_size)
    return time.perf_counter() - start

  python = os.environ.get(TORCH_PYTHON_ENV)
  ours, theirs = [], []
  if not python:
    ours = [time_ours() for _ in range(REPEATS)]
    result["reference"] = (
      f"skipped: {TORCH_PYTHON_ENV} is not set; to enable it: {ENABLE_REFERENCE}"
    )
  else:
    with tempfile.TemporaryDirectory() as tmp:
      sentences_path = os.path.join(tmp, "sentences.json")
      embeddings_path = os.path.join(tmp, "reference.npy")
      with open(sentences_path, "w") as f:
        json.dump(sentences, f)
      reference = _Reference(
        python,
        hf_loader.default_teacher_path(),
        sentences_path,
        threads,
        max_tokens,
        batch_size,
        embeddings_path,
      )
      try:
        for i in range(REPEATS):
          if i % 2:
            theirs.append(reference.time())
            ours.append(time_ours())
          else:
            ours.append(time_ours())
            theirs.append(reference.time())
      finally:
        reference.close()
      want = np.load(embeddings_path)
    cosine = np.sum(ours_embeddings * want, 1) / (
      np.linalg.norm(ours_embeddings, axis=1) * np.linalg.norm(want, axis=1)
    )
    result.update(
      {
        "reference": f"sentence-transformers ({reference.version})",
        "reference_seconds": theirs,
        "reference_sentences_per_s": len(sentences) / statistics.median(theirs),
        "min_cosine_to_reference": float(cosine.min()),
      }
    )
  result["ours_seconds"] = ours
  result["ours_sentences_per_s"] = len(sentences) / statistics.median(ours)
  if theirs:
    result["ratio_ours_over_reference"] = (
      result["ours_sentences_per_s"] / result["reference_sentences_per_s"]
    )
  return result
