"""What the benchmarks share, so that figures which must agree come from one place.

- `MatmulPeak`: the hardware limit every FLOPs utilisation is divided by, a
  large jitted float32 matmul measured in the same process as the thing it is
  compared with.
- `alternate`: the one timing loop. The machines are shared and noisy, so two
  things are compared only when measured side by side: rounds visit every
  candidate once, in reversed order every other round (ABBA), and each side's
  figure is a median.
- `TrainStep`: the student's train step built as `train.train_and_evaluate`
  builds it (mesh, shardings, donated state), on synthetic batches of any
  length, with its FLOPs and memory from XLA's analyses.
- `ratio`: one row of the table `bench.run` prints.
"""

from collections.abc import Callable
import functools
import os
import platform
import statistics
import subprocess
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stalign import sharding
from stalign import train_optimizer
from stalign import train_steps
from stalign.data import features
from stalign.data import text as text_lib
from stalign.models import student

TEACHER_DIM = 384  # all-MiniLM-L6-v2, the demo's teacher.
MATMUL_N = 2048  # Large enough that the matmul runs at the CPU's sustained rate.
CHARS_PER_SECOND = 15  # Typical speech: sets the CTC targets' length in synthetic batches.


def machine() -> dict[str, Any]:
  """What the figures were measured on: they are only comparable on the same machine."""
  cpu = platform.processor()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), cpu)
  return {
    "cpu": cpu,
    "cores": len(os.sched_getaffinity(0)),
    "jax": jax.__version__,
    "devices": [str(d) for d in jax.devices()],
  }


def alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
  """Seconds of each call, `repeats` per function, in rounds of alternating order.

  Every function must block until its work is done (`jax.block_until_ready`).
  One that returns a Python float has timed itself (leaving out a set-up it
  does first); any other is timed whole.
  """
  seconds = {name: [] for name in fns}
  for name in abba(list(fns), repeats):
    start = time.perf_counter()
    timed = fns[name]()
    elapsed = time.perf_counter() - start
    seconds[name].append(timed if type(timed) is float else elapsed)
  return seconds


def abba(names: list[str], repeats: int) -> list[str]:
  """`repeats` rounds of `names`, every other round reversed: slow drift falls on all alike."""
  return [n for i in range(repeats) for n in (names if i % 2 == 0 else names[::-1])]


def median(seconds: list[float]) -> float:
  return statistics.median(seconds)


class MatmulPeak:
  """FLOP/s of a jitted n x n matmul: the practical peak of this process's default device.

  float32 on CPUs (they have no fast bfloat16 matmul); `bench.accelerator`
  asks for bfloat16 at n = 8192, the size at which a GPU's matrix units run at
  their sustained rate. Call it (it blocks) inside `alternate` beside the thing
  measured, then read `flops_per_s` of its seconds.
  """

  def __init__(self, n: int = MATMUL_N, dtype: jnp.dtype = jnp.float32):
    keys = jax.random.split(jax.random.key(0), 2)
    self.a, self.b = (jax.random.normal(k, (n, n), dtype) for k in keys)
    self.n = n
    self.dtype = jnp.dtype(dtype).name
    self.flops = 2.0 * n**3
    self._fn = jax.jit(jnp.matmul)
    self()  # Compiles.

  def __call__(self) -> None:
    jax.block_until_ready(self._fn(self.a, self.b))

  def flops_per_s(self, seconds: list[float]) -> float:
    return self.flops / median(seconds)


def ratio(
  name: str,
  value: float,
  numerator: tuple[str, float],
  denominator: tuple[str, float],
  limit: str,
) -> dict[str, Any]:
  """One row of the table: value = numerator / denominator (or as `name` says), both raw."""
  return {
    "name": name,
    "ratio": round(float(value), 4),
    "numerator": {"what": numerator[0], "value": float(numerator[1])},
    "denominator": {"what": denominator[0], "value": float(denominator[1])},
    "limit": limit,
  }


# --------------------------------------------------------------- the train step


def synthetic_batch(config: ml_collections.ConfigDict, frames: int, rows: int, seed: int = 0):
  """A numpy batch as `train_steps.device_batch` returns it: `rows` utterances of `frames` frames.

  Compute does not depend on the values; CTC targets are as long as real
  speech gives (`CHARS_PER_SECOND`), so the CTC loss stays finite and the
  optimizer does the work it does in training.
  """
  rng = np.random.default_rng(seed)
  labels = features.ctc_frames(frames, config.model)
  seconds = frames * config.features.hop_ms / 1000
  vocab = text_lib.vocab_size(config.features.ctc_targets)
  return {
    "features": rng.standard_normal((rows, frames, config.features.num_mels), np.float32),
    "num_frames": np.full(rows, frames, np.int32),
    "ctc_labels": rng.integers(1, vocab, (rows, labels), np.int32),
    "num_labels": np.full(rows, min(int(seconds * CHARS_PER_SECOND), labels // 2), np.int32),
    "teacher": rng.standard_normal((rows, TEACHER_DIM), np.float32),
    "weight": np.ones(rows, np.float32),
  }


class TrainStep:
  """`train_steps.train_step` jitted as the training loop jits it, for one config.

  Same mesh (`config.mesh` over this process's devices) as
  `train.train_and_evaluate`, and the state layout and jitted step from the
  functions it builds its own with (`train_steps.sharded_state_shapes`,
  `train_steps.jit_train_step`), so compile time, memory and speed are what a run
  sees. The target mean is zeros: it is a constant of the program and does not
  change its cost.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    teacher_dim: int = TEACHER_DIM,
    devices: list[jax.Device] | None = None,
  ):
    self.config = config
    self.teacher_dim = teacher_dim
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.rules = config.sharding_rules
    self.tx = train_optimizer.make_optimizer(config, train_optimizer.make_schedule(config))
    self.graphdef, params = nnx.split(nnx.eval_shape(lambda: student.build(config, teacher_dim)))
    self.num_params = sum(x.size for x in jax.tree.leaves(params))
    self._init = functools.partial(train_steps.init_state, config, self.tx, teacher_dim)
    self.abstract_state, self.state_sharding = train_steps.sharded_state_shapes(
      config, self.tx, teacher_dim, self.mesh
    )
    self.data_sharding = sharding.batch_sharding(self.mesh)
    self.jitted = train_steps.jit_train_step(
      config,
      self.graphdef,
      self.tx,
      np.zeros(teacher_dim, np.float32),
      self.state_sharding,
      self.data_sharding,
    )

  def init(self) -> dict:
    with sharding.rules_context(self.mesh, self.rules):
      return jax.jit(self._init, out_shardings=self.state_sharding)()

  def abstract_batch(self, frames: int) -> dict:
    """Global batch of `input.batch_size` rows of `frames` frames, as shapes only."""
    batch = synthetic_batch(self.config, frames, 1)
    rows = self.config.input.batch_size
    return {
      k: jax.ShapeDtypeStruct((rows,) + v.shape[1:], v.dtype, sharding=self.data_sharding)
      for k, v in batch.items()
    }

  def device_batch(self, local: dict) -> dict:
    """This process's rows (numpy) -> the global batch on the mesh, as the loop builds it."""
    return sharding.global_batch(local, self.mesh)

  def lower(self, frames: int) -> jax.stages.Lowered:
    with sharding.rules_context(self.mesh, self.rules):
      return self.jitted.lower(self.abstract_state, self.abstract_batch(frames))

  def compile(self, frames: int) -> jax.stages.Compiled:
    return self.lower(frames).compile()

  def __call__(self, state: dict, batch: dict) -> tuple[dict, dict]:
    with sharding.rules_context(self.mesh, self.rules):
      return self.jitted(state, batch)


def compiled_flops(stage: jax.stages.Compiled | jax.stages.Lowered) -> float:
  """FLOPs of one call of a compiled (or lowered) function, by XLA's cost analysis.

  For the train step these are the model's FLOPs only with its blocks unrolled
  and not rematerialised: a scanned body is counted once, and recomputation
  counts again.
  """
  cost = stage.cost_analysis()
  return float((cost if isinstance(cost, dict) else cost[0])["flops"])


def model_flops(config: ml_collections.ConfigDict, frames: int) -> float:
  """FLOPs of one train step with every block counted once, none recomputed.

  XLA's cost analysis of the step lowered for the CPU (one CPU device), with
  the blocks unrolled and not rematerialised. Lowered, not compiled, and not
  for the accelerator: a GPU's compiled program hands its matmuls to cuBLAS
  as custom calls, which its cost analysis does not count.
  """
  unrolled = config.copy_and_resolve_references()
  unrolled.model.scan_blocks = unrolled.model.remat = False
  unrolled.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, model=1))
  lowered = TrainStep(unrolled, devices=jax.devices("cpu")[:1]).lower(frames)
  return compiled_flops(lowered)


def step_memory_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
  """What XLA plans to hold for one step: arguments (state, batch) and temporaries."""
  stats = compiled.memory_analysis()
  return {
    "argument_bytes": int(stats.argument_size_in_bytes),
    "temp_bytes": int(stats.temp_size_in_bytes),
    "output_bytes": int(stats.output_size_in_bytes),
    "alias_bytes": int(stats.alias_size_in_bytes),
    "peak_bytes": int(stats.argument_size_in_bytes + stats.temp_size_in_bytes),
  }


def median_bucket(config: ml_collections.ConfigDict) -> int:
  """The (upper) middle one of the config's padded lengths: the shape of a typical batch."""
  lengths = features.bucket_lengths(config)
  return lengths[len(lengths) // 2]


class TorchServer:
  """A peer's server script in the torch interpreter, spoken to one line at a time.

  torch never enters stalign's venv: each reference (sentence-transformers, the cascade) runs
  as a child process with `threads` threads, answering each line on stdin with one on stdout.
  """

  def __init__(self, python: str, script: str, args: list[str], threads: int, name: str):
    self.name = f"{name} ({script})"
    env = dict(
      os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)
    )
    self._proc = subprocess.Popen(
      [python, script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    self.pid = self._proc.pid

  def read(self) -> str:
    """The server's next line, or a RuntimeError if it exited (its stderr says why)."""
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.name} exited with {self._proc.wait()}; see its stderr above")
    return line.strip()

  def ask(self, line: str) -> str:
    self._proc.stdin.write(line + "\n")
    self._proc.stdin.flush()
    return self.read()

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait()
