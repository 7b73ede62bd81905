"""Smoke runs of the benchmarks, so their code cannot rot; no timing is asserted."""

from bench import compile_time


def test_compile_time_benchmark_compiles_both_ways_and_reports_a_ratio():
  out = compile_time.run(frames=64, depths=(1,), repeats=1)
  [depth] = out["depths"].values()
  assert set(depth["compile_seconds"]) == {"unrolled", "scanned"}
  assert depth["scanned_over_unrolled"] > 0
