"""Sentences/s of the Flax teacher vs sentence-transformers, same sentences, same CPU, at
batch 64 (the demo's `teacher.batch_size`) and 256; and the teacher's FLOPs utilisation.

A ratio is only meaningful when both sides see the same machine load, and this
machine is shared. So the reference runs as a long-lived server in a separate
torch interpreter (torch must stay out of stalign's venv), and repetitions
alternate between the two sides and the matmul peak (`_common.alternate`, ABBA
order so slow drift cancels); each figure is the median of its repetitions.
Both sides use the same threads, batch size, truncation and sentences (the
start of the demo corpus's training split), and the minimum cosine between
their embeddings is checked in the same run. The teacher's FLOPs are XLA's
cost analysis of every padded batch one pass runs, so its utilisation counts
padding as work done.

Enable the reference with an interpreter that has torch and sentence-transformers:

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.13.0 sentence-transformers
  STALIGN_TORCH_PYTHON=/tmp/torchvenv/bin/python python -m bench.run teacher_throughput
"""

import json
import os
import tempfile
import time
from typing import Any

import jax
import numpy as np

from bench import _common
from configs import demo
from stalign.data import grammar
from stalign.models import hf_loader
from stalign.models import teacher as teacher_lib

NUM_SENTENCES = 2000
REPEATS = 5
BATCH_SIZES = (64, 256)
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
    self._server = _common.TorchServer(
      python,
      _SERVER,
      [model_dir, sentences_path, str(threads), str(max_tokens), str(batch_size), embeddings_path],
      threads,
      "the sentence-transformers reference",
    )
    self.version = self._server.read()

  def time(self) -> float:
    return float(self._server.ask("run"))

  def close(self) -> None:
    self._server.close()


def _record_shapes(teacher: teacher_lib.Teacher, texts: list[str], batch_size: int) -> list:
  """(ids, mask) shapes of every encoder call that `embed` makes for these texts."""
  shapes, apply = [], teacher.apply

  def recording(state, ids, mask):
    shapes.append((ids.shape, ids.dtype))
    return apply(state, ids, mask)

  teacher.apply = recording
  try:
    teacher.embed(texts, batch_size)
  finally:
    teacher.apply = apply
  return shapes


def embed_flops(teacher: teacher_lib.Teacher, texts: list[str], batch_size: int) -> float:
  """FLOPs of one `embed` of `texts`: XLA's cost analysis of every padded batch it runs."""
  total, cost = 0.0, {}
  for shape, dtype in _record_shapes(teacher, texts, batch_size):
    if shape not in cost:
      spec = jax.ShapeDtypeStruct(shape, dtype)
      cost[shape] = _common.compiled_flops(teacher.apply.lower(teacher.state, spec, spec).compile())
    total += cost[shape]
  return total


def _cosines(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
  return np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))


def measure(
  teacher: teacher_lib.Teacher,
  sentences: list[str],
  batch_size: int,
  threads: int,
  repeats: int,
  python: str | None,
) -> dict[str, Any]:
  """One batch size: both sides' sentences/s, the teacher's FLOPs utilisation, parity."""
  start = time.perf_counter()
  ours_embeddings = teacher.embed(sentences, batch_size)  # Compiles every padded shape.
  result = {
    "batch_size": batch_size,
    "ours_first_call_s": time.perf_counter() - start,
    "ours_flops_per_pass": embed_flops(teacher, sentences, batch_size),
  }
  peak = _common.MatmulPeak()
  fns = {
    "ours": lambda: teacher.embed(sentences, batch_size),
    "matmul": peak,
  }
  with tempfile.TemporaryDirectory() as tmp:
    reference = None
    if python:
      sentences_path = os.path.join(tmp, "sentences.json")
      embeddings_path = os.path.join(tmp, "reference.npy")
      with open(sentences_path, "w") as f:
        json.dump(sentences, f)
      reference = _Reference(
        python,
        hf_loader.default_teacher_path(),
        sentences_path,
        threads,
        teacher.max_tokens,
        batch_size,
        embeddings_path,
      )
      fns["reference"] = reference.time
    try:
      seconds = _common.alternate(fns, repeats)
    finally:
      if reference:
        reference.close()
    if reference:
      cosine = _cosines(ours_embeddings, np.load(embeddings_path))
      result.update(
        {
          "reference": f"sentence-transformers ({reference.version})",
          "reference_seconds": seconds["reference"],
          "reference_sentences_per_s": len(sentences) / _common.median(seconds["reference"]),
          "min_cosine_to_reference": float(cosine.min()),
        }
      )
    else:
      result["reference"] = (
        f"skipped: {TORCH_PYTHON_ENV} is not set; to enable it: {ENABLE_REFERENCE}"
      )
  ours_s = _common.median(seconds["ours"])
  peak_flops = peak.flops_per_s(seconds["matmul"])
  result.update(
    {
      "ours_seconds": seconds["ours"],
      "ours_sentences_per_s": len(sentences) / ours_s,
      "ours_flops_per_s": result["ours_flops_per_pass"] / ours_s,
      "matmul_n": peak.n,
      "matmul_seconds": seconds["matmul"],
      "matmul_peak_flops_per_s": peak_flops,
      "ours_mfu_over_matmul_peak": result["ours_flops_per_pass"] / ours_s / peak_flops,
    }
  )
  if reference:
    result["ratio_ours_over_reference"] = (
      result["ours_sentences_per_s"] / result["reference_sentences_per_s"]
    )
  return result


def run(
  num_sentences: int = NUM_SENTENCES,
  batch_sizes: tuple[int, ...] = BATCH_SIZES,
  repeats: int = REPEATS,
) -> dict[str, Any]:
  """Per batch size: sentences/s of both sides and their ratio, the teacher's FLOPs
  utilisation against the matmul peak, and how far the two sides' embeddings differ."""
  config = demo.get_config()
  # XLA's CPU client uses one thread per schedulable core; torch gets the same.
  threads = len(os.sched_getaffinity(0))
  sentences = bench_sentences(num_sentences)
  teacher = teacher_lib.load(max_tokens=config.teacher.max_tokens)
  python = os.environ.get(TORCH_PYTHON_ENV)
  out = {
    "sentences": len(sentences),
    "max_tokens": teacher.max_tokens,
    "threads": threads,
    "repeats": repeats,
    "length_quantum": teacher_lib.LENGTH_QUANTUM,
    "batch_sizes": {},
    "ratios": [],
  }
  for batch_size in batch_sizes:
    r = measure(teacher, sentences, batch_size, threads, repeats, python)
    out["batch_sizes"][str(batch_size)] = r
    if "ratio_ours_over_reference" in r:
      out["ratios"].append(
        _common.ratio(
          f"sentences/s / sentence-transformers (batch {batch_size})",
          r["ratio_ours_over_reference"],
          ("ours sentences/s", r["ours_sentences_per_s"]),
          ("sentence-transformers sentences/s", r["reference_sentences_per_s"]),
          f"min cosine {r['min_cosine_to_reference']:.6f}; both are matmul-bound, see the MFU row",
        )
      )
    out["ratios"].append(
      _common.ratio(
        f"MFU / matmul peak (batch {batch_size})",
        r["ours_mfu_over_matmul_peak"],
        ("teacher GFLOP/s", r["ours_flops_per_s"] / 1e9),
        (f"f32 matmul {r['matmul_n']}^2 GFLOP/s", r["matmul_peak_flops_per_s"] / 1e9),
        "384-wide matmuls on short (padded) sequences; tokenising, softmax and layer norms",
      )
    )
  return out
