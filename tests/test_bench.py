"""Smoke runs of the benchmarks at tiny sizes, so their code cannot rot; no timing is asserted.

What is asserted: each figure is what its raw measurements say it is (recomputed
here from the timings and counts the benchmark reports), and each count from
XLA agrees with one made independently of the benchmark.
"""

import json
import os
import statistics

import jax
import numpy as np
import pytest

from bench import _common
from bench import run as runner


def _tiny():
  """A demo-shaped config small enough to compile in seconds, with one bucket of 72 frames."""
  from configs import demo

  c = demo.get_config("tiny")
  c.model.dim = 32
  c.input.batch_size = 4
  c.input.bucket_boundaries = ()
  c.features.max_seconds = 0.64
  return c


def _assert_ratios(out: dict, count: int) -> None:
  """`count` table rows, each the quotient of the two raw figures it shows."""
  assert len(out["ratios"]) == count
  for row in out["ratios"]:
    assert set(row) == {"name", "ratio", "numerator", "denominator", "limit"}
    assert row["numerator"]["value"] > 0 and row["denominator"]["value"] > 0
    quotient = row["numerator"]["value"] / row["denominator"]["value"]
    assert row["ratio"] == pytest.approx(quotient, rel=1e-3, abs=1e-4), row


def _nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def test_train_step_benchmark_reports_mfu_against_the_matmul_peak_and_a_breakdown():
  from bench import train_step

  out = train_step.run(configs=[("tiny", _tiny(), 64)], repeats=1)
  result = out["configs"]["tiny"]
  # MFU from the raw timings: the step's FLOPs per median second over 2n^3 per median second.
  peak = 2 * result["matmul_n"] ** 3 / statistics.median(result["matmul_seconds"])
  achieved = result["step_flops"] / statistics.median(result["step_seconds"])
  assert result["matmul_peak_flops_per_s"] == pytest.approx(peak)
  assert result["mfu_over_matmul_peak"] == pytest.approx(achieved / peak)
  # The compiled step (dropout, optimizer, scanned blocks) does at least the model's own FLOPs.
  assert result["step_flops"] >= 0.9 * _common.model_flops(_tiny(), 64)
  assert set(result["breakdown"]) == {
    "front end",
    "attention",
    "conv module",
    "feed-forward",
    "CTC loss",
    "distill + contrastive",
    "optimizer",
    "other",
  }
  _assert_ratios(out, 1)


@pytest.mark.slow  # Three fresh JAX processes: about 80 CPU-seconds.
def test_compile_time_benchmark_compiles_every_bucket_cold_and_warm_and_both_block_layouts():
  from bench import compile_time

  out = compile_time.run(config=_tiny(), depth_list=(1,))
  buckets = out["buckets"]
  assert list(buckets["cold_seconds"]) == list(buckets["warm_seconds"]) == ["72"]
  assert buckets["cache_entries"] >= 1
  assert set(out["depths"]["1"]["compile_seconds"]) == {"unrolled", "scanned"}
  _assert_ratios(out, 2)


def test_input_pipeline_benchmark_runs_the_same_batches_from_the_pipeline_and_from_memory(
  prepared_config, monkeypatch
):
  from bench import input_pipeline

  # Every step's batch, by content: the two sides must time the same work.
  seen, call = [], _common.TrainStep.__call__

  def recording(step, state, batch):
    seen.append(np.asarray(batch["features"]).tobytes())
    return call(step, state, batch)

  monkeypatch.setattr(_common.TrainStep, "__call__", recording)
  out = input_pipeline.run(config=prepared_config, steps=2, repeats=1)
  assert out["data_dir"] == prepared_config.data_dir and out["padded_lengths"]
  assert len(out["pipeline_seconds"]) == len(out["memory_seconds"]) == 1
  # One compiling call per padded length, then (repeats=1) the pipeline's 2 steps, memory's 2.
  compiling = len(out["padded_lengths"])
  assert len(seen) == compiling + 4
  pipeline, memory = seen[compiling : compiling + 2], seen[compiling + 2 :]
  assert pipeline == memory and pipeline[0] != pipeline[1]
  _assert_ratios(out, 1)


def test_teacher_benchmark_counts_the_teachers_flops_and_says_how_to_enable_the_reference(
  monkeypatch,
):
  from bench import teacher_throughput

  monkeypatch.delenv(teacher_throughput.TORCH_PYTHON_ENV, raising=False)
  out = teacher_throughput.run(num_sentences=12, batch_sizes=(8,), repeats=1)
  result = out["batch_sizes"]["8"]
  assert result["reference"].startswith("skipped")
  # The count against the transformer's own arithmetic over the padded batches embed runs
  # (all-MiniLM-L6-v2: 6 layers of width 384, FFN 1536): per token and layer, 2 FLOPs per
  # weight of the four attention projections and the FFN, plus the attention scores and their
  # weighted sum. XLA also counts norms, softmax and GELU: a few percent more (3.2%, measured).
  from stalign.models import teacher as teacher_lib

  teacher = teacher_lib.load(max_tokens=out["max_tokens"])
  shapes = teacher_throughput._record_shapes(
    teacher, teacher_throughput.bench_sentences(12), batch_size=8
  )
  layers, width, ffn = 6, 384, 1536
  matmuls = sum(
    rows * tokens * layers * (2 * (4 * width**2 + 2 * width * ffn) + 4 * tokens * width)
    for (rows, tokens), _ in shapes
  )
  assert 1.0 <= result["ours_flops_per_pass"] / matmuls <= 1.1
  _assert_ratios(out, 1)


def test_retrieval_benchmark_agrees_with_faiss_on_every_top_k():
  from bench import retrieval

  pytest.importorskip("faiss", reason="the bench extra (faiss-cpu) is in the dev install")
  out = retrieval.run(items=500, dim=32, k=5)
  assert out["identical_top_k"] and out["check"]["disagreements"] == 0
  _assert_ratios(out, 1)


def test_retrieval_check_tells_float_ties_from_disagreements():
  import numpy as np

  from bench import retrieval

  queries, gallery = retrieval.synthetic(50, 8)
  scores = queries @ gallery.T
  top = np.argsort(-scores, axis=1)[:, :3]
  ranks = 1 + np.sum(scores > np.diag(scores)[:, None], 1)
  assert retrieval.check(ranks, top, queries, gallery) == {
    "differing_queries": 0,
    "disagreements": 0,
  }
  wrong = ranks.copy()
  wrong[0] = 1 if ranks[0] > 1 else 2
  assert retrieval.check(wrong, top, queries, gallery)["disagreements"] == 1


def test_corpus_synthesis_benchmark_builds_on_one_worker_and_on_every_core():
  from bench import corpus_synthesis

  out = corpus_synthesis.run(utterances=16, split_sample=2)
  assert out["one_worker"]["audio_seconds"] == out["all_cores"]["audio_seconds"] > 0
  _assert_ratios(out, 2)


@pytest.mark.slow  # Three fresh JAX processes: about 80 CPU-seconds.
def test_scaling_benchmark_runs_simulated_devices_and_two_processes():
  from bench import scaling

  out = scaling.run(config=_tiny(), frames=64, devices=(2,), steps=1)
  assert out["devices"]["2"]["devices"] == 2
  assert out["two_processes"]["processes"] == out["two_processes"]["devices"] == 2
  _assert_ratios(out, 1)


def test_memory_benchmark_reads_the_compiled_plan_and_saves_the_curve(tmp_path):
  from bench import memory

  plot = str(tmp_path / "memory.png")
  out = memory.run(config=_tiny(), lengths=(64,), plot_path=plot)
  step = _common.TrainStep(_tiny())
  # The step's arguments are its state and batch, counted from their shapes, not by XLA; the
  # few bytes of slack are XLA's own size for a scalar.
  arguments = _nbytes(step.abstract_state) + _nbytes(step.abstract_batch(64))
  for point in (out["curves"]["remat"]["64"], out["curves"]["no remat"]["64"]):
    assert point["argument_bytes"] == pytest.approx(arguments, abs=8)
    assert point["peak_bytes"] == point["argument_bytes"] + point["temp_bytes"] > arguments
    # Per second of audio: 4 rows of 64 frames of 10 ms.
    assert point["peak_bytes_per_audio_second"] == pytest.approx(point["peak_bytes"] / (4 * 0.64))
  assert os.path.getsize(plot) > 0
  _assert_ratios(out, 2)


def test_runner_prints_one_row_per_ratio_and_notes_the_rest():
  row = _common.ratio("a / b", 0.5, ("a", 1.0), ("b", 2.0), "what limits it")
  text = runner.table(
    {
      "one": {"ratios": [row, row], "wall_s": 1.0},
      "two": {"skipped": "no data", "wall_s": 0.0},
      "three": {"error": "Traceback ...", "wall_s": 2.0},
    }
  )
  lines = text.splitlines()
  assert sum(line.startswith("one: a / b") for line in lines) == 2
  assert "two: skipped: no data" in lines
  assert any(line.startswith("three: FAILED") for line in lines)


def test_tpu_estimates_count_the_step_flops_and_state_their_formulas():
  from bench import tpu_estimates

  out = tpu_estimates.run()
  assert out["train_step_flops_per_12s_utterance"] > 6 * 100e6 * 150  # 6 x params x frames.
  assert out["v4_32_epoch_compute_seconds_estimate"] > 0 and "MFU" in out["v4_32_formula"]


def test_input_reader_benchmark_divides_the_readers_audio_rate_by_the_chips_consumption(tmp_path):
  """On a tiny folder at runlocal's shapes: the reader's figure is its rounds' real audio over
  their time, the consumer is chips x peak x MFU / FLOPs per audio second, each ratio divides the
  two, and a measured accelerator result adds a row naming its device."""
  from bench import input_reader
  from bench import tpu_estimates
  from configs import tpu_multitask

  results = tmp_path / "results"
  results.mkdir()
  per_chip = lambda batch, rate, mfu: {"batch": batch, "audio_seconds_per_s": rate, **mfu}
  accelerator = {
    "device_kind": "NVIDIA H200",
    "configs": {  # docs/performance.md's figures; runlocal is not the full model: never chosen.
      "runlocal": per_chip(8, 9e9, {}),
      "per chip, batch 64": per_chip(64, 6308.0, {"mfu_over_matmul_peak": 0.11}),
      "per chip, batch 256": per_chip(256, 8907.0, {"mfu_over_matmul_peak": 0.15}),
    },
  }
  (results / "accelerator.json").write_text(json.dumps(accelerator))
  flops = 8e9
  kwargs = dict(
    utterances=12,
    seconds=(1.0, 1.9),
    batches=3,
    repeats=2,
    data_dir=str(tmp_path / "data"),
    config=tpu_multitask.get_config("runlocal"),
    rows=4,
  )
  out = input_reader.run(**kwargs, results_dir=str(results), flops_per_audio_second=flops)
  assert out["build_s"] > 0 and out["rows_per_step"] == 4
  rounds = out["reader"]["rounds"]
  assert len(rounds) == 2 and out["reader"]["batch_shapes"] == [(4, 200, 80)]
  for r in rounds:  # 3 batches of 4 clips of 1-1.9 s, padded to runlocal's 200-frame bucket.
    assert 12 * 1.0 <= r["audio_seconds"] <= 12 * 1.9
    assert r["padded_audio_seconds"] == pytest.approx(12 * 2.0)
    assert r["audio_seconds_per_s"] == pytest.approx(r["audio_seconds"] / r["seconds"])
  rate = statistics.median(r["audio_seconds_per_s"] for r in rounds)
  assert out["reader_audio_seconds_per_s"] == pytest.approx(rate)
  assert out["reader"]["load"]["other_processes_cores_busy"] >= 0  # Shared cores, recorded.
  # float16 log-mel, 100 frames of 80 bands a second (16 kB), plus text, labels and framing.
  stored = out["stored_bytes_per_audio_second"]
  assert 16_000 < stored < 20_000
  assert out["reader_stored_bytes_per_s"] == pytest.approx(rate * stored)
  # One v4 host: 4 chips of 275 TFLOP/s.
  target = 4 * 275e12 * 0.4 / flops
  assert out["consumer_estimates_audio_seconds_per_s"]["0.4"] == pytest.approx(target)
  assert out["consumer_estimates_audio_seconds_per_s"]["0.15"] == pytest.approx(target * 0.15 / 0.4)
  assert out["reader_over_target_consumer"] == pytest.approx(rate / target)
  assert out["reader_at_least_2x_ahead_at_target_mfu"] == (rate / target >= 2)
  measured = out["measured_consumer"]
  assert (measured["device_kind"], measured["batch"]) == ("NVIDIA H200", 256)
  assert out["reader_over_measured_consumer"] == pytest.approx(rate / 8907.0)
  # The Python part alone: the records of the first 3 planned batches, over epochs as needed.
  serial = out["serial_read"]
  assert (serial["batches"], serial["records"]) == (3, 12)
  assert serial["audio_seconds_per_s"] > 0
  # Busy cores come from /proc's 10 ms CPU-time ticks: rounds this short may not register.
  cores = out["cores_for_2x_at_target_mfu"]
  assert cores > 0 if isinstance(cores, float) else cores.startswith("unmeasured")
  _assert_ratios(out, 3)
  names = [r["name"] for r in out["ratios"]]
  assert "estimate" in names[0] and "Python part" in names[1] and "H200" in names[2]

  # The folder is kept; without a measured step, one row; FLOPs as tpu_estimates counts them.
  again = input_reader.run(**{**kwargs, "batches": 1, "repeats": 1}, results_dir=str(tmp_path))
  assert again["build_s"] == 0 and again["measured_consumer"].startswith("none")
  per_second = tpu_estimates.step_flops_per_utterance(12.0) / 12.0
  assert again["model_flops_per_audio_second"] == per_second
  _assert_ratios(again, 2)


def test_accelerator_variants_flip_scanning_and_remat_against_the_config_as_written(monkeypatch):
  from bench import accelerator_variants

  assert "no accelerator" in accelerator_variants.run()["skipped"]
  written = accelerator_variants.variant_config(64, {})
  assert written.model.scan_blocks and written.model.remat and written.input.batch_size == 64
  unrolled = accelerator_variants.VARIANTS["unrolled, no remat"]
  flipped = accelerator_variants.variant_config(256, unrolled)
  assert not flipped.model.scan_blocks and not flipped.model.remat
  assert flipped.input.batch_size == 256 and flipped.model.dim == written.model.dim

  # `accelerator.run` over the rows (its `measure` is tested below), each row's step time over
  # its batch's first row.
  def measure(config, frames, peak, repeats):
    fast = not config.model.scan_blocks and not config.model.remat
    rate = dict.fromkeys(
      ("achieved_flops_per_s", "matmul_peak_flops_per_s", "mfu_over_matmul_peak"), 1.0
    )
    rate.update(utterances_per_s=1.0, audio_seconds_per_s=1.0, compile_s=1.0)
    return {
      "step_median_s": 0.5 if fast else 1.0,
      "temp_bytes": 3 * 2**30 if fast else 2**30,
      **rate,
    }

  monkeypatch.setattr(accelerator_variants.accelerator, "measure", measure)
  rows = ((4, "as configured (scan, remat)"), (4, "unrolled, no remat"))
  out = accelerator_variants.run(rows, frames=64, matmul_n=64, require_accelerator=False)
  assert list(out["configs"]) == [accelerator_variants.row_name(b, name) for b, name in rows]
  _assert_ratios(out, 3)  # Each row's MFU, and the one step-time ratio.
  step_time = out["ratios"][-1]
  assert step_time["ratio"] == 0.5 and "3.0 GiB vs 1.0 GiB" in step_time["limit"]
  assert "unrolled, no remat / as configured" in step_time["name"]


def test_accelerator_benchmark_skips_on_cpus_and_counts_the_unrolled_models_flops():
  from bench import accelerator

  assert "no accelerator" in accelerator.run()["skipped"]
  names = [name for name, _, _ in accelerator.default_configs()]
  assert names == ["runlocal"] + [f"per chip, batch {b}" for b in accelerator.PER_CHIP_BATCHES]

  scanned = _tiny()
  scanned.model.depth, scanned.model.scan_blocks, scanned.model.remat = 2, True, True
  scanned.train.compute_dtype = "bfloat16"
  out = accelerator.run([("tiny", scanned, 64)], repeats=1, matmul_n=64, require_accelerator=False)
  result = out["configs"]["tiny"]
  # Every block counts, though the step runs one scanned, rematerialised body: each one more
  # adds the same FLOPs.
  flops = {}
  for depth in (1, 3):
    other = scanned.copy_and_resolve_references()
    other.model.depth = depth
    flops[depth] = _common.model_flops(other, 64)
  per_block = result["model_flops_per_step"] - flops[1]
  assert per_block > 0
  assert flops[3] - result["model_flops_per_step"] == pytest.approx(per_block, rel=1e-3)
  assert result["utterances_per_s"] > 0 and result["mfu_over_matmul_peak"] > 0
  assert result["compile_s"] > 0
  _assert_ratios(out, 1)


def test_cascade_benchmark_measures_our_row_and_says_how_to_enable_the_cascade(
  tiny_run, tmp_path, monkeypatch
):
  from bench import cascade

  monkeypatch.delenv(cascade.TORCH_PYTHON_ENV, raising=False)
  assert "make demo" in cascade.run(run_dir=str(tmp_path))["skipped"]  # No run, no interpreter.
  out = cascade.run(run_dir=tiny_run, max_clips=2)
  assert "pip install torch==2.13.0" in out["rows"]["cascade"]["skipped"]
  # Sentences and utterances for retrieval ("all" is theirs), the unseen voice's digits apart.
  assert out["clips"] == {"librispeech": 2, "an4": 2, "fsdd": 2} and out["gallery"]["all"] == 4
  ours = out["rows"]["ours"]
  assert ours["audio_seconds_per_s"]["all"] > 0 and len(ours["seconds"]["an4"]) == 1
  for space in ("speech_to_text", "speech_to_text_teacher_space"):
    assert ours[space]["all"]["queries"] == 4 and 0 <= ours[space]["all"]["recall_at_1"] <= 1
    assert "fsdd" not in ours[space]
  digits = ours["zero_shot_digits"]
  assert digits["clips"] == 2 and list(digits["per_voice"]) == ["nicolas"]
  assert 0 <= digits["accuracy"] <= 1
  assert out["load"]["other_processes_cores_busy"] >= 0 and out["ratios"] == []
  assert cascade.word_errors("Hello, world!", "hello there world") == (1, 3)
