"""Small data builders shared by the tests (real FSDD clips, manifests, generated LibriSpeech
and AN4 folders, tiny configs, tiny random Whisper weights)."""

from collections.abc import Callable
from collections.abc import Mapping
import json
import os
import struct
from typing import Any

import numpy as np
import pytest

from stalign import data
from stalign.models import whisper_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Relative to the repository, where pytest runs from (`stalign.data.real_data_dir`).
FSDD_DIR = os.path.join(REPO, data.real_data_dir("fsdd"))


def real_speech_dir(name: str) -> str:
  """The real speech set `name` under the repository's data root; skips the test when it is absent,
  so a clone without ../shared runs the suite with those tests skipped and the reason printed."""
  path = os.path.join(REPO, data.real_data_dir(name))
  if not os.path.exists(path):
    pytest.skip(
      f"needs {name}, not found under {path}: set ${data.DATA_ROOT_ENV} to the folder holding "
      f"{name}/: {data.REAL_SET_ORIGINS[name]}"
    )
  return path


def fsdd_files(speaker: str, takes: range) -> list[str]:
  root = real_speech_dir("fsdd")
  return [
    os.path.join(root, "recordings", f"{d}_{speaker}_{t}.wav") for t in takes for d in range(10)
  ]


def write_manifest(path: str, files: list[str]) -> str:
  from stalign.data import sources

  with open(path, "w") as f:
    for file in files:
      digit, speaker, _ = os.path.basename(file).split("_")
      f.write(
        json.dumps(
          {
            "audio_filepath": file,
            "duration": 0.5,
            "text": sources.DIGIT_WORDS[int(digit)],
            "labels": {"digit": int(digit), "speaker": speaker},
          }
        )
        + "\n"
      )
  return path


def tiny_config(data_dir: str):
  """The demo config shrunk for tests, reading manifests of FSDD clips."""
  from configs import demo

  c = demo.get_config("tiny")
  c.data_dir = data_dir
  c.data.source = "manifest"
  c.features.max_seconds = 1.5
  c.input.bucket_boundaries = ()  # One padded length: one compiled step per test run.
  c.input.batch_size = 8
  c.eval.batch_size = 8
  c.model.dim = 32
  c.train.log_every = 5
  c.train.checkpoint_every = 5
  c.train.warmup_steps = 2
  return c


def write_tone(path: str, index: int, seconds: float = 0.6, rate: int = 16_000) -> str:
  """A short FLAC or WAV (by the extension) of two tones pitched by `index`; the writer keeps it."""
  import numpy as np
  import soundfile as sf

  t = np.arange(int(seconds * rate)) / rate
  hz = 150.0 + 23.0 * index
  wave = 0.2 * np.sin(2 * np.pi * hz * t) + 0.1 * np.sin(2 * np.pi * 2.7 * hz * t)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, wave.astype(np.float32), rate)
  return path


def write_librispeech(root: str, chapters: Mapping[str, list[str]], subset="train-clean-5") -> str:
  """A folder in LibriSpeech layout: {"SPEAKER-CHAPTER": [transcript, ...]} as tone clips under
  root/subset/SPEAKER/CHAPTER/ with their SPEAKER-CHAPTER.trans.txt; returns root."""
  for n, (name, texts) in enumerate(chapters.items()):
    speaker, chapter = name.split("-")
    folder = os.path.join(root, subset, speaker, chapter)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.trans.txt"), "w") as f:
      for i, text in enumerate(texts):
        write_tone(os.path.join(folder, f"{name}-{i:04d}.flac"), 3 * n + i)
        f.write(f"{name}-{i:04d} {text}\n")
  return root


def write_an4(root: str, speakers: Mapping[str, list[str]]) -> str:
  """An AN4-like folder: {speaker: [text, ...]} as wav/SPEAKER/*.flac tone clips and a NeMo
  manifest.jsonl with relative paths and a `speaker` field; returns the manifest's path."""
  path = os.path.join(root, "manifest.jsonl")
  os.makedirs(root, exist_ok=True)
  with open(path, "w") as f:
    for n, (speaker, texts) in enumerate(speakers.items()):
      for i, text in enumerate(texts):
        clip = os.path.join("wav", speaker, f"an{n}{i:02d}-{speaker}-b.flac")
        write_tone(os.path.join(root, clip), 2 * n + i)
        row = {"audio_filepath": clip, "duration": 0.6, "text": text, "speaker": speaker}
        f.write(json.dumps(row) + "\n")
  return path


# Over the prepared FSDD clips (30-115 frames): training batches of 8 fill the 48, 56 and 152
# buckets, test-split batches the 40, 48 and 56 ones.
SEVERAL_BUCKETS = (40, 48, 56)


def with_buckets(config, boundaries=SEVERAL_BUCKETS):
  """A copy of `config` that pads to several length buckets (`tiny_config` has one)."""
  c = config.copy_and_resolve_references()
  c.input.bucket_boundaries = boundaries
  return c


def run_config(data_dir: str, manifests: Mapping[str, str], **overrides: Any):
  """`tiny_config` reading `manifests` ({split: path}), with `section__name=value` overrides."""
  c = tiny_config(data_dir)
  for split, path in manifests.items():
    c.data.manifests[split] = path
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


# For runs compared across process counts. The global batches are already the same, shuffled
# (every process computes the same epoch plan and reads its rows of each batch); dropout's masks
# follow the row order within a process, so it is off.
SAME_BATCH_ANY_PROCESS_COUNT = dict(model__dropout=0.0)

_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import testdata

def get_config():
  return testdata.run_config({data!r}, {manifests!r}, **{overrides!r})
"""


def write_config(
  path: str | os.PathLike, data_dir: str, manifests: Mapping[str, str], **overrides: Any
) -> str:
  """Writes a config file (`--config=PATH`) of `run_config(data_dir, manifests, **overrides)`.

  For the tests that start a run as users do, in a process of its own (`stalign.main`, a
  notebook's kernel): the config reaches it as a file, and builds itself from this module.
  """
  with open(path, "w") as f:
    f.write(
      _CONFIG_FILE.format(
        tests=os.path.join(REPO, "tests"),
        data=data_dir,
        manifests=dict(manifests),
        overrides=overrides,
      )
    )
  return str(path)


# Loaded into every Python process of a test run through sitecustomize: any attempt to reach a
# host other than this one is refused and written to $STALIGN_NET_LOG, so the test sees it even
# when a library catches the error and falls back.
NETWORK_GUARD = """
import os, socket
_LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
def _refuse(what):
  with open(os.environ["STALIGN_NET_LOG"], "a") as f:
    f.write(repr(what) + "\\n")
  raise OSError(f"network blocked by the test: {what!r}")
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def connect(self, address):
  if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
    _refuse(address)
  return _connect(self, address)
def getaddrinfo(host, *args, **kwargs):
  if host not in _LOCAL and host is not None:
    _refuse(host)
  return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
"""


def make_run(config, workdir: str) -> str:
  """A run folder (config.json + a step-7 checkpoint of freshly initialised params), no training."""
  from flax import nnx

  from stalign import checkpoints
  from stalign.data import layout
  from stalign.models import student

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  dim, _ = layout.read_teacher_stats(config.data_dir)
  params = nnx.state(student.build(config, dim, seed=1))
  mgr = checkpoints.manager(workdir, keep=1, async_save=False)
  checkpoints.save(mgr, 7, {"params": params}, {"epoch": 0, "batch": 0})
  mgr.wait_until_finished()
  mgr.close()
  return workdir


def free_port() -> int:
  """A port nothing listens on now; another process may take it before it is bound (the caller
  retries: `two_process_main`)."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def two_process_main(args: list[str], env: dict, timeout: int = 500) -> list[tuple[str, str]]:
  """`python -m stalign.main ARGS` as two hosts joined by jax.distributed on localhost, one device
  each, as users launch it; [(stdout, stderr)] per process, after checking both succeeded.

  The coordinator's port is free when chosen but bound only later; if another test's process
  took it meanwhile, the launch is repeated on a new port (the run resumes what it wrote).
  """
  import subprocess
  import sys

  env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  for attempt in range(3):
    port = free_port()
    procs = [
      subprocess.Popen(
        [sys.executable, "-m", "stalign.main", *args, f"--coordinator_address=127.0.0.1:{port}"]
        + ["--num_processes=2", f"--process_id={i}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      for i in range(2)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    taken = any("address already in use" in stderr.lower() for _, stderr in outs)
    if not (taken and attempt < 2 and any(p.returncode for p in procs)):
      break
  for p, (_, stderr) in zip(procs, outs):
    assert p.returncode == 0, stderr[-4000:]
  return outs


def assert_same_params(a: dict, b: dict) -> None:
  """Two runs' parameters, {path: array}, agree; the attention key biases are left out.

  A key bias shifts every score of a query alike, which softmax ignores: its
  gradient is rounding noise, which Adam scales up to lr-sized steps of either sign.
  """
  import numpy as np

  assert a.keys() == b.keys() and a
  for name in sorted(a):
    if "attn/key/bias" not in name:
      np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


def flat_params(params) -> dict:
  """{"blocks/0/attn/...": array} of a params pytree."""
  import jax

  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): value
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]
  }


def mtimes(folder) -> dict[str, int]:
  """{path: mtime in ns} of every file under `folder`: equal after a rerun that rewrites nothing."""
  return {
    os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
    for root, _, files in os.walk(folder)
    for f in files
  }


# ---------------------------------------------------------------- tiny Whisper weights


def _ct2_string(text: str) -> bytes:
  raw = text.encode() + b"\0"  # As CTranslate2's writer: the length counts a trailing NUL.
  return struct.pack("<H", len(raw)) + raw


_CT2_DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int16): 2, np.dtype(np.float16): 4}


def ct2_bytes(
  variables: dict[str, np.ndarray],
  aliases: dict[str, str] = (),
  spec: str = "WhisperSpec",
  version: int = 6,
  bfloat16: tuple[str, ...] = (),
) -> bytes:
  """A CTranslate2 `model.bin` (format of `ctranslate2.specs.ModelSpec._serialize`).

  Variables named in `bfloat16` are uint16 bit patterns written as bfloat16 (dtype 5).
  """
  out = [struct.pack("<I", version), _ct2_string(spec), struct.pack("<II", 3, len(variables))]
  for name, value in variables.items():
    dtype_id = 5 if name in bfloat16 else _CT2_DTYPE_IDS[value.dtype]
    out += [_ct2_string(name), struct.pack("<B", value.ndim)]
    out += [struct.pack("<I", d) for d in value.shape]
    out += [struct.pack("<BI", dtype_id, value.nbytes), value.tobytes()]
  out.append(struct.pack("<I", len(aliases)))
  for alias, target in dict(aliases).items():
    out += [_ct2_string(alias), _ct2_string(target)]
  return b"".join(out)


def random_ct2_variables(dims: whisper_weights.Dims, seed: int = 0) -> dict[str, np.ndarray]:
  """A random Whisper in CTranslate2's names and PyTorch's layout.

  Matrices are float16 (as faster-whisper's conversions), norms float32, scaled so that
  attention is far from uniform and a mixed-up projection shows.
  """
  rng = np.random.default_rng(seed)
  w, m = dims.width, dims.num_mels

  def matrix(*shape):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * 1.5 / np.sqrt(fan_in)).astype(np.float16)

  bias = lambda n: (0.2 * rng.standard_normal(n)).astype(np.float16)
  gamma = lambda: (1.0 + 0.2 * rng.standard_normal(w)).astype(np.float32)
  beta = lambda: (0.2 * rng.standard_normal(w)).astype(np.float32)
  v = {
    "encoder/num_heads": np.array(dims.heads, np.int16),
    "encoder/conv1/weight": matrix(w, m, 3),
    "encoder/conv1/bias": bias(w),
    "encoder/conv2/weight": matrix(w, w, 3),
    "encoder/conv2/bias": bias(w),
    "encoder/position_encodings/encodings": rng.standard_normal((dims.max_frames, w)).astype(
      np.float16
    ),
  }
  for i in range(dims.layers):
    p = f"encoder/layer_{i}/"
    v[p + "self_attention/layer_norm/gamma"] = gamma()
    v[p + "self_attention/layer_norm/beta"] = beta()
    v[p + "self_attention/linear_0/weight"] = matrix(3 * w, w)
    v[p + "self_attention/linear_0/bias"] = bias(3 * w)
    v[p + "self_attention/linear_1/weight"] = matrix(w, w)
    v[p + "self_attention/linear_1/bias"] = bias(w)
    v[p + "ffn/layer_norm/gamma"] = gamma()
    v[p + "ffn/layer_norm/beta"] = beta()
    v[p + "ffn/linear_0/weight"] = matrix(4 * w, w)
    v[p + "ffn/linear_0/bias"] = bias(4 * w)
    v[p + "ffn/linear_1/weight"] = matrix(w, 4 * w)
    v[p + "ffn/linear_1/bias"] = bias(w)
  v["encoder/layer_norm/gamma"] = gamma()
  v["encoder/layer_norm/beta"] = beta()
  v["decoder/embeddings/weight"] = matrix(16, w)  # Not the encoder's: read and left alone.
  return v


CT2_ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}  # As real Whisper files.


# A tiny Whisper with the full position table (30 s), for end-to-end runs of the Whisper front end.
TINY_WHISPER = whisper_weights.Dims(num_mels=80, width=32, heads=4, layers=2, max_frames=1500)


def write_tiny_whisper(path: str, dims: whisper_weights.Dims = TINY_WHISPER, seed: int = 0) -> str:
  """A random Whisper `model.bin` (CTranslate2 format) at `path`; returns the path."""
  with open(path, "wb") as f:
    f.write(ct2_bytes(random_ct2_variables(dims, seed), CT2_ALIASES))
  return path


def as_processes(monkeypatch, work: Callable[[int], None], count: int = 2) -> None:
  """Runs `work(index)` in `count` threads that stand in for processes: `jax.process_index`,
  `jax.process_count` and the barrier (`sync_global_devices`) are patched to theirs.

  This checks a stage's own split of the work and its ordering, not jax.distributed, which the
  two-process tests of stalign.main (tests/test_main.py, tests/test_gcs.py) run for real. The
  first error in any thread is raised here, after the barrier has released the others.
  """
  import threading

  from jax.experimental import multihost_utils

  local, barrier, errors = threading.local(), threading.Barrier(count, timeout=60), []
  monkeypatch.setattr("jax.process_count", lambda: count)
  monkeypatch.setattr("jax.process_index", lambda: local.index)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: barrier.wait())

  def process(index):
    local.index = index
    try:
      work(index)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)
      barrier.abort()

  threads = [threading.Thread(target=process, args=(i,)) for i in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise errors[0]
