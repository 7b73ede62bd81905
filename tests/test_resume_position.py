"""Smoke run of bench/resume_position.py, so its code cannot rot; no timing is asserted."""

from bench import resume_position


def test_resume_position_benchmark_reaches_the_same_batch_both_ways(prepared_config):
  out = resume_position.run(
    prepared_config, ks=(2, 30), replay_ks=(2,), synthetic_records=4096, repeats=1
  )
  real = out["real"]
  assert real["k=2"]["same_batch"] and real["k=2"]["replay_seconds"] > 0
  assert real["k=30"]["replay_seconds_estimate"] > 0 and real["k=30"]["indexed_seconds"] > 0
  assert [r["ratio"] > 0 for r in out["ratios"]] == [True, True]
  scale = out["librispeech_scale"]
  assert scale["batches_per_epoch"] > 0 and scale["k=30"]["plan_seconds"] > 0
