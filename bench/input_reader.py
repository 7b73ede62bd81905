"""Audio seconds per second the training reader delivers on one host, at the TPU config's shapes,
over what one host's accelerator step consumes.

The reader is `stalign.input_pipeline.train_iterator` as training calls it, with
configs/tpu_multitask.py's input: 80 log-mel bands every 10 ms of 16 kHz audio, stored as float16,
its length buckets and prefetch, at one host's share of the global batch (256 over the 4 hosts of
a v4-32: 64 rows a step, what each of the 4 processes reads). Its data folder is built once by
the data stage (`prepare.prepare`, manifest source, the packaged teacher) from generated clips
of 10-17 s, where most of LibriSpeech's training utterances lie (tpu_multitask's docstring), into
`data/bench_reader` (about 110 MB; the clips are deleted once the TFRecords exist). The shards
are read from this host's disk, in the page cache after the first pass, not from `gs://`: the
figure is what the reader's CPU work allows when storage keeps up.

Timed: `repeats` rounds of `batches` batches, after the first batch (start-up, reported apart)
and as many more as the prefetch buffer holds. The audio seconds of a round are its batches'
`duration`s (real audio, not padding); the figure is the median round's. The reader takes every
core it can get, so what other processes ran meanwhile is recorded beside it (`load`).

The consumer: the audio seconds per second a host's chips take at a model FLOPs utilisation,
  chips x bf16 peak x MFU / (model FLOPs per audio second),
model FLOPs counted as `tpu_estimates` counts them (the full config's train step on a 12 s
utterance, blocks unrolled, no remat). An estimate, given for one v4 host (4 chips, 275 TFLOP/s)
at the target MFU 0.4, and at 0.15, what one H200 measured (docs/performance.md). When
bench/results/accelerator.json holds a measured step (`bench.accelerator` on a GPU or TPU), the
reader is also divided by its fastest full-model row, per device, named with its file and device.
The aim is a reader at least 2x ahead of the consumer at the target MFU.
"""

import glob
import itertools
import json
import os
import shutil
import statistics
import time
from typing import Any

import ml_collections
import numpy as np

from bench import _common
from bench import cascade
from bench import tpu_estimates
from configs import tpu_multitask
from stalign import input_pipeline
from stalign import prepare
from stalign.data import layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "data", "bench_reader")
RESULTS = os.path.join(REPO, "bench", "results")
UTTERANCES = 512  # Evenly spread over SECONDS: 6 full batches of 64 per epoch in 5 buckets.
SECONDS = (10.0, 17.0)
HOSTS = tpu_estimates.V4_32["hosts"]  # The global batch's share one host reads.
V4_HOST = {
  "chips": tpu_estimates.V4_32["chips"] // tpu_estimates.V4_32["hosts"],
  "bf16_peak_flops": tpu_estimates.V4_32["bf16_peak_flops"],
}
TARGET_MFU = tpu_estimates.ASSUMED_MFU  # 0.4.
# The MFU one H200 measured for this step at batch 256 (docs/performance.md).
MEASURED_H200_MFU = 0.15
AHEAD = 2.0  # How far ahead of the chips the reader should stay.
CHARS_PER_SECOND = 15  # Read speech: sets the transcripts' (and CTC targets') length.
WORDS = (
  "THE OLD MAN SAID THAT HE HAD SEEN A SHIP UPON THE GREY SEA AT DAWN AND SHE WALKED SLOWLY "
  "THROUGH QUIET ROOMS WHERE NOTHING HAD CHANGED SINCE WINTER CAME OVER HILLS"
).split()
BUILT_MARKER = "bench_reader.json"  # What the folder was built from; another spec rebuilds it.


def reader_config(
  data_dir: str, rows: int | None = None, base: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
  """`base` (the full tpu_multitask config) reading `data_dir` (manifest source), `rows` a step.

  In one process `train_iterator` reads the whole global batch, so a global batch of one host's
  share (256 / 4 = 64) is what one process of four reads on a v4-32.
  """
  config = (base or tpu_multitask.get_config()).copy_and_resolve_references()
  config.data_dir = data_dir
  config.data.source = "manifest"
  config.data.num_shards = 8
  for split in ("train", "valid", "test"):
    config.data.manifests[split] = os.path.join(data_dir, "manifests", f"{split}.jsonl")
  config.input.batch_size = rows or config.input.batch_size // HOSTS
  return config


def _transcript(rng: np.random.Generator, seconds: float) -> str:
  words, chars = [], 0
  while chars < seconds * CHARS_PER_SECOND:
    words.append(str(rng.choice(WORDS)))
    chars += len(words[-1]) + 1
  return " ".join(words)


def _write_clips(config: ml_collections.ConfigDict, spec: dict) -> None:
  """Manifests of generated clips: train's evenly spread over `seconds`, valid/test 2 of 2 s."""
  import soundfile as sf

  rng = np.random.default_rng(0)
  rate = config.features.sample_rate
  low, high = spec["seconds"]
  lengths = {
    "train": rng.permutation(np.linspace(low, high, spec["utterances"])),
    "valid": np.full(2, 2.0),
    "test": np.full(2, 2.0),
  }
  os.makedirs(os.path.join(config.data_dir, "manifests"), exist_ok=True)
  for split, seconds in lengths.items():
    folder = os.path.join(config.data_dir, "audio", split)
    os.makedirs(folder, exist_ok=True)
    with open(config.data.manifests[split], "w") as manifest:
      for i, length in enumerate(seconds):
        t = np.arange(int(length * rate)) / rate
        pitch = 110 + 60 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t)
        wave = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / rate) + rng.normal(0, 0.02, t.size)
        path = os.path.join(folder, f"{i:05d}.wav")
        sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
        row = {"audio_filepath": path, "text": _transcript(rng, length), "speaker": str(i % 40)}
        manifest.write(json.dumps(row) + "\n")


def ensure_data(config: ml_collections.ConfigDict, utterances: int, seconds: tuple) -> float:
  """Builds the folder unless it holds this spec already; the seconds the build took (0: kept)."""
  spec = {"utterances": utterances, "seconds": list(seconds)}
  marker = os.path.join(config.data_dir, BUILT_MARKER)
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f) == spec:
        return 0.0
  shutil.rmtree(config.data_dir, ignore_errors=True)
  start = time.perf_counter()
  _write_clips(config, spec)
  prepare.prepare(config)
  shutil.rmtree(os.path.join(config.data_dir, "audio"))  # The TFRecords hold what is read.
  with open(marker, "w") as f:
    json.dump(spec, f)
  return time.perf_counter() - start


def stored_bytes_per_audio_second(config: ml_collections.ConfigDict) -> float:
  """The train shards' bytes per second of audio in them: what the reader reads."""
  shards = glob.glob(os.path.join(layout.tfrecords_dir(config.data_dir), "train-*.tfrecord"))
  hours = layout.read_summary(config.data_dir, "train")["hours"]
  return sum(os.path.getsize(s) for s in shards) / (hours * 3600)


def measure_reader(config: ml_collections.ConfigDict, batches: int, repeats: int) -> dict:
  """Audio seconds per second of `train_iterator`, median of `repeats` rounds of `batches`."""
  start = time.perf_counter()
  it = input_pipeline.train_iterator(config, "train", _common.TEACHER_DIM)
  next(it)
  first_batch_s = time.perf_counter() - start
  for _ in range(config.input.prefetch):  # Read ahead while the first batch was awaited.
    next(it)
  hop_s = config.features.hop_ms / 1000
  rounds, shapes = [], set()
  load = cascade._Load([os.getpid()])  # The reader's threads are this process's.
  for _ in range(repeats):
    audio = real = padded = 0.0
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(it)
      audio += float(np.sum(batch["duration"]))
      real += float(np.sum(batch["num_frames"]))
      padded += batch["features"].shape[0] * batch["features"].shape[1]
      shapes.add(tuple(batch["features"].shape))
    seconds = time.perf_counter() - start
    rounds.append(
      {
        "seconds": seconds,
        "audio_seconds": audio,
        "audio_seconds_per_s": audio / seconds,
        "real_frame_fraction": real / padded,
        "padded_audio_seconds": padded * hop_s,
      }
    )
  return {
    "first_batch_s": first_batch_s,
    # The cores are shared: what other processes took while the rounds ran.
    "load": load.result(),
    "rounds": rounds,
    "batch_shapes": sorted(shapes),
    "audio_seconds_per_s": statistics.median(r["audio_seconds_per_s"] for r in rounds),
  }


def measure_serial_read(config: ml_collections.ConfigDict, batches: int) -> dict:
  """Audio s/s of the reader's Python part alone: `RecordIndex.read` of the first planned batches.

  That part holds the interpreter lock (only its `pread` calls release it), so however many cores
  a host has it reads no faster than this; the parsing, padding and batching around it run in
  tf.data's own threads and scale with the cores. Timed on one thread over the epochs' plans,
  after one untimed batch.
  """
  index = input_pipeline.record_index(config, "train")
  plans = (input_pipeline.epoch_plan(index, config, epoch) for epoch in itertools.count())
  plan = np.stack(list(itertools.islice(itertools.chain.from_iterable(plans), batches + 1)))
  index.read(plan[0])
  start = time.perf_counter()
  for rows in plan[1:]:
    index.read(rows)
  seconds = time.perf_counter() - start
  records = plan[1:].size
  audio = float(np.sum(index.num_frames[plan[1:]])) * config.features.hop_ms / 1000
  return {
    "batches": batches,
    "records": records,
    "us_per_record": seconds / records * 1e6,
    "audio_seconds_per_s": audio / seconds,
  }


def consumer(mfu: float, flops_per_audio_second: float, chips: int, peak: float) -> float:
  """Audio seconds per second `chips` of `peak` FLOP/s take at `mfu`: an estimate."""
  return chips * peak * mfu / flops_per_audio_second


def measured_consumer(results_dir: str) -> dict | None:
  """The fastest full-model row of a measured `bench.accelerator` result, if one is recorded."""
  path = os.path.join(results_dir, "accelerator.json")
  try:
    with open(path) as f:
      result = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  rows = {n: r for n, r in result.get("configs", {}).items() if n.startswith("per chip")}
  if not rows:  # Skipped (no accelerator) or failed.
    return None
  name, row = max(rows.items(), key=lambda item: item[1]["audio_seconds_per_s"])
  return {
    "file": os.path.relpath(path, REPO) if path.startswith(REPO) else path,
    "device_kind": result["device_kind"],
    "row": name,
    "batch": row["batch"],
    "audio_seconds_per_s": row["audio_seconds_per_s"],
    "mfu_over_matmul_peak": row.get("mfu_over_matmul_peak"),
  }


def run(
  utterances: int = UTTERANCES,
  seconds: tuple[float, float] = SECONDS,
  batches: int = 60,
  repeats: int = 3,
  data_dir: str = DATA_DIR,
  config: ml_collections.ConfigDict | None = None,
  rows: int | None = None,
  results_dir: str = RESULTS,
  flops_per_audio_second: float | None = None,
) -> dict[str, Any]:
  """The reader's audio s/s on this host over the accelerator step's, estimated and measured.

  `config` (default: the full tpu_multitask) sets the input's shapes; `rows` the batch one host
  reads (default a v4-32 host's share of it); `flops_per_audio_second` the consumer's cost
  (default: the full config's step, as tpu_estimates counts it).
  """
  config = reader_config(data_dir, rows, config)
  build_s = ensure_data(config, utterances, seconds)
  serial = measure_serial_read(config, batches)  # First: tf.data's threads outlive the reader.
  reader = measure_reader(config, batches, repeats)
  rate = reader["audio_seconds_per_s"]
  if flops_per_audio_second is None:
    flops_per_audio_second = tpu_estimates.step_flops_per_utterance(12.0) / 12.0
  host = V4_HOST
  estimates = {
    str(mfu): consumer(mfu, flops_per_audio_second, host["chips"], host["bf16_peak_flops"])
    for mfu in (TARGET_MFU, MEASURED_H200_MFU)
  }
  target = estimates[str(TARGET_MFU)]
  stored = stored_bytes_per_audio_second(config)
  out = {
    "data_dir": config.data_dir,
    "build_s": build_s,
    "utterances": utterances,
    "utterance_seconds": list(seconds),
    "rows_per_step": config.input.batch_size,
    "rows_per_step_note": f"one host's share: the global batch over the {HOSTS} hosts of a v4-32",
    "features": {k: config.features[k] for k in ("sample_rate", "num_mels", "hop_ms")},
    "bucket_boundaries": list(config.input.bucket_boundaries),
    "stored_bytes_per_audio_second": stored,
    "reader": reader,
    "reader_audio_seconds_per_s": rate,
    "reader_stored_bytes_per_s": rate * stored,
    "model_flops_per_audio_second": flops_per_audio_second,
    "v4_host": host,
    "consumer_estimates_audio_seconds_per_s": estimates,
    "consumer_formula": "chips x bf16 peak x MFU / model FLOPs per audio second (an estimate; "
    f"{MEASURED_H200_MFU} is the MFU one H200 measured, docs/performance.md)",
    "consumer_at_target_stored_bytes_per_s": target * stored,
    "reader_over_target_consumer": rate / target,
    "reader_at_least_2x_ahead_at_target_mfu": rate / target >= AHEAD,
  }
  cores = _common.machine()["cores"]
  # Not a prediction for a TPU VM's many cores: whether the reader scales with them is unmeasured.
  out["reader_audio_seconds_per_s_per_core"] = rate / cores
  verdict = "is" if out["reader_at_least_2x_ahead_at_target_mfu"] else "is NOT"
  at_measured = rate / estimates[str(MEASURED_H200_MFU)]
  out["ratios"] = [
    _common.ratio(
      f"reader audio s/s (one host) / one v4 host's {host['chips']} chips at MFU {TARGET_MFU} "
      "(estimate)",
      rate / target,
      ("reader audio s/s", rate),
      ("consumed audio s/s (estimate)", target),
      f"the reader {verdict} >= {AHEAD:g}x ahead ({at_measured:.2f}x at MFU "
      f"{MEASURED_H200_MFU}); measured on {cores} cores from local disk, "
      f"{rate * stored / 1e6:.0f} MB/s of records, where the chips need "
      f"{target * stored / 1e6:.0f} MB/s; the reader's CPU work per record (other processes "
      f"kept {reader['load']['other_processes_cores_busy']} cores busy)",
    )
  ]
  ceiling = serial["audio_seconds_per_s"]
  out["serial_read"] = serial
  out["ratios"].append(
    _common.ratio(
      f"the reader's Python part alone (audio s/s) / one v4 host's chips at MFU {TARGET_MFU} "
      "(estimate)",
      ceiling / target,
      ("Python part's audio s/s, one thread", ceiling),
      ("consumed audio s/s (estimate)", target),
      "the ceiling of one host's reader whatever its cores: that part holds the interpreter "
      f"lock ({serial['us_per_record']:.0f} us a record); the rest runs in tf.data's threads",
    )
  )
  busy = reader["load"]["benchmark_cores_busy"]
  # An extrapolation: that the native part scales past this host's cores is not measured here.
  out["cores_for_2x_at_target_mfu"] = (
    AHEAD * target / (rate / busy)
    if busy
    else "unmeasured: the rounds were shorter than /proc's CPU-time ticks resolve"
  )
  measured = measured_consumer(results_dir)
  out["measured_consumer"] = measured or (
    f"none: no measured step in {os.path.join(results_dir, 'accelerator.json')} "
    "(`python -m bench.run accelerator` where JAX sees a GPU or TPU)"
  )
  if measured:
    out["reader_over_measured_consumer"] = rate / measured["audio_seconds_per_s"]
    out["ratios"].append(
      _common.ratio(
        f"reader audio s/s (one host) / measured step on one {measured['device_kind']}",
        rate / measured["audio_seconds_per_s"],
        ("reader audio s/s", rate),
        ("consumed audio s/s (measured)", measured["audio_seconds_per_s"]),
        f"{measured['file']}, {measured['row']}, MFU {measured['mfu_over_matmul_peak']}; one "
        "device, not a host's chips",
      )
    )
  return out
