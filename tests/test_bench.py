"""Smoke runs of the benchmarks, so their code cannot rot; no timing is asserted."""

from bench import compile_time


def test_compile_time_benchmark_compiles_both_ways_and_reports_a_ratio():
  out = compile_time.run(frames=64, depths=(1,), repeats=1)
  [depth] = out["depths"].values()
  assert set(depth["compile_seconds"]) == {"unrolled", "scanned"}
  assert depth["scanned_over_unrolled"] > 0


def test_tpu_estimates_count_the_step_flops_and_state_their_formulas():
  from bench import tpu_estimates

  out = tpu_estimates.run()
  assert out["train_step_flops_per_12s_utterance"] > 6 * 100e6 * 150  # 6 x params x frames.
  assert out["v4_32_epoch_compute_seconds_estimate"] > 0 and "MFU" in out["v4_32_formula"]
