"""The regime study: its grid and budgets, the statistics on hand-computed numbers, the quick
study end to end (rerun skips every run), and the study notebook on its output."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import demo
from configs import study as study_config
from stalign import config as config_lib
from stalign import study_plan
from stalign import study_runs
from stalign import study_stats

import testdata
from testdata import real_speech_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T_975_DF2 = 4.302652729749464  # Student t quantile 0.975 with 2 degrees of freedom (tables).


# ------------------------------------------------------------------ the grid


def test_plan_matches_budgets_and_shares_pretraining_by_seed():
  config = study_config.get_config()
  runs = study_plan.plan(config, "W")
  total, pretrain = config.train.steps, config.study.pretrain_steps
  assert len(runs) == 3 * (1 + 4 * 2)  # Per seed: pretraining, then 4 regimes x 2 families.
  by_name = {r.name: r for r in runs}
  for seed in (0, 1, 2):
    assert by_name[f"asr_pretrain/seed{seed}"].config.train.steps == pretrain
    for family in ("ours", "paper"):
      a, b, c, d = (
        by_name[f"{regime}-{family}/seed{seed}"]
        for regime in ("a_distill", "b_asr_distill", "c_multitask", "d_asr_multitask")
      )
      assert a.workdir == os.path.join("W", f"a_distill-{family}", f"seed{seed}")
      for run in (a, c):
        assert run.config.train.steps == total and not run.config.init_from and run.offset == 0
      for run in (b, d):  # Pretraining + fine-tuning = the same budget; one pretraining per seed.
        assert run.offset + run.config.train.steps == total
        assert run.config.init_from == os.path.join("W", "asr_pretrain", f"seed{seed}")
        assert run.config.init_skip == ("pool_",)
      assert all(r.config.seed == seed for r in (a, b, c, d))
      assert a.config.loss.ctc_weight == b.config.loss.ctc_weight == 0
      assert c.config.loss.ctc_weight == d.config.loss.ctc_weight > 0
  assert runs[0].name == "asr_pretrain/seed0" and runs[0].config.eval.every_steps == 0
  assert runs[0].config.loss.distill == "none" and runs[0].config.loss.ctc_weight == 1.0
  assert {r.config.data_dir for r in runs} == {"data/demo"}


def test_families_are_the_recipes_loss_and_the_papers_plain_distance():
  """`ours` follows configs/demo.py whatever it becomes; `paper` is cosine to raw targets."""
  recipe = demo.get_config()
  runs = {r.name: r for r in study_plan.plan(study_config.get_config(), "W")}
  ours, paper = runs["c_multitask-ours/seed0"].config, runs["c_multitask-paper/seed0"].config
  assert ours.loss.to_dict() == recipe.loss.to_dict()
  assert paper.loss.distill == "cosine" and not paper.loss.centre_targets
  assert paper.loss.contrastive_weight == 0 and paper.loss.ctc_weight == recipe.loss.ctc_weight
  # Apart from the study's budget, seed and loss, a run is its regime's config file.
  from configs import distill

  a = runs["a_distill-ours/seed0"].config
  expected = distill.get_config()
  for key in ("model", "input", "features", "corpus", "data", "loss"):
    assert a[key].to_dict() == expected[key].to_dict(), key


def test_quick_config_is_the_tiny_recipe_and_every_config_validates():
  quick = study_config.get_config("quick")
  assert quick.model.to_dict() == demo.get_config("tiny").model.to_dict()
  assert quick.data_dir == "data/tiny" and quick.study.seeds >= 2
  for arg in (None, "quick", "tiny"):
    study_plan.validate_study(study_config.get_config(arg))
  with pytest.raises(config_lib.ConfigError, match="unknown config arg"):
    study_config.get_config("quik")


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("study.pretrain_steps", 300, "study.pretrain_steps=300 must be in 1..train.steps-1"),
    ("train.warmup_steps", 200, "outlasts the fine-tuning"),
    ("study.baseline", "z", "study.baseline='z' is not a regime"),
    ("eval.every_steps", 0, "curves need"),
  ],
)
def test_bad_study_values_name_their_key(key, value, message):
  config = ml_collections.ConfigDict(study_config.get_config().to_dict())
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    study_plan.validate_study(config)


def test_a_regime_may_not_change_the_utterances_and_unknown_keys_are_named():
  def changed(regime_changes: dict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(study_config.get_config().to_dict())
    config.study.regimes.a_distill.update(regime_changes)
    return config

  with pytest.raises(config_lib.ConfigError, match="a_distill changes \\['corpus'\\]"):
    study_plan.validate_study(changed({"corpus": {"num_train": 10}}))
  # Another front end of the same utterances, only in a data folder of its own.
  with pytest.raises(config_lib.ConfigError, match="changes features but not data_dir"):
    study_plan.validate_study(changed({"features": {"num_mels": 40}}))
  study_plan.validate_study(changed({"features": {"num_mels": 40}, "data_dir": "data/d40"}))
  config = ml_collections.ConfigDict(study_config.get_config().to_dict())
  config = ml_collections.ConfigDict(study_config.get_config().to_dict())
  config.study.families.paper.distil = "mse"
  with pytest.raises(config_lib.ConfigError, match="study.families.paper.distil is not a key"):
    study_plan.plan(config, "W")


def test_the_whisper_study_compares_the_pretrained_encoder_with_scratch_on_the_same_utterances():
  """configs/study_whisper.py: (a)/(c) log-mel from scratch, (b)/(d) Whisper's frames, each
  without and with CTC; two data folders of the same utterances, built once each; no
  pretraining run, and a pretraining budget nothing would use is refused."""
  from configs import real_scratch
  from configs import study_whisper
  from configs import whisper

  for arg in ("quick", None):
    config = study_plan.validate_study(study_whisper.get_config(arg))
    runs = study_plan.plan(config, "W")
    assert len(runs) == 4 * config.study.seeds and all(r.evaluated for r in runs)
    by_regime = {r.regime: r.config for r in runs}
    tiny = "tiny" if arg else None
    for regime, source in [("a_distill", real_scratch), ("b_whisper_distill", whisper)]:
      c, expected = by_regime[regime], source.get_config(tiny)
      assert (c.data_dir, c.features.frontend) == (expected.data_dir, expected.features.frontend)
      assert c.model.dim == expected.model.dim and c.loss.ctc_weight == 0
    assert (
      by_regime["c_multitask"].loss.ctc_weight
      == by_regime["d_whisper_multitask"].loss.ctc_weight
      > 0
    )
    for c in by_regime.values():  # The same utterances, the same updates, the students' own spaces.
      assert c.corpus == config.corpus and c.data == config.data
      assert c.train.steps == config.train.steps and c.init_from == ""
      assert c.model.transcript_weight == 0 and c.model.ctc_lm == ""
    folders = [c.data_dir for c in study_plan.data_configs(runs)]
    assert sorted(folders) == sorted({c.data_dir for c in by_regime.values()}) and len(folders) == 2

  config = ml_collections.ConfigDict(study_whisper.get_config("quick").to_dict())
  config.study.pretrain_steps = 4
  with pytest.raises(config_lib.ConfigError, match="no regime warm-starts"):
    study_plan.validate_study(config)


def test_a_run_folder_with_other_settings_is_refused(tmp_path):
  run = study_plan.plan(study_config.get_config("quick"), str(tmp_path))[1]
  study_runs.check_same_config(run)  # Nothing there yet.
  os.makedirs(run.workdir)
  saved = json.loads(run.config.to_json_best_effort())
  saved["train"]["steps"] = 999
  with open(os.path.join(run.workdir, "config.json"), "w") as f:
    json.dump(saved, f)
  with pytest.raises(FileExistsError, match="train.steps: 999 there, 8 now"):
    study_runs.check_same_config(run)


# ------------------------------------------------------------------ statistics


def test_summary_is_mean_sample_std_and_t_interval():
  s = study_stats.summarize([0.5, 0.6, 0.7])
  half = T_975_DF2 * 0.1 / 3**0.5  # 0.248414
  assert s["n"] == 3 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
  assert s["ci95"] == pytest.approx([0.6 - half, 0.6 + half])
  assert study_stats.summarize([0.4]) == {"n": 1, "mean": 0.4, "std": None, "ci95": None}
  assert study_stats.summarize([])["mean"] is None


def test_paired_comparison_by_seed():
  """Differences 0.1, 0.2, 0.0: mean 0.1, sd 0.1, t = sqrt(3) on 2 degrees of freedom.

  With 2 degrees of freedom the t distribution has a closed form, P(T <= t) = 1/2 + t / (2
  sqrt(2 + t^2)), so p = 2 (1/2 - sqrt(3) / (2 sqrt(5))) = 1 - sqrt(3/5) = 0.225403.
  """
  base = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9}  # Seed 3 has no partner: left out.
  other = {0: 0.6, 1: 0.8, 2: 0.7, 4: 0.1}
  p = study_stats.paired(base, other)
  half = T_975_DF2 * 0.1 / 3**0.5
  assert p["n"] == 3 and p["mean_diff"] == pytest.approx(0.1)
  assert p["ci95"] == pytest.approx([0.1 - half, 0.1 + half])
  assert p["p_value"] == pytest.approx(1 - (3 / 5) ** 0.5)
  same = study_stats.paired({0: 0.5, 1: 0.1}, {0: 0.7, 1: 0.3})  # Equal up to rounding: no p.
  assert same["mean_diff"] == pytest.approx(0.2) and same["p_value"] is None
  assert study_stats.paired({0: 0.5}, {0: None})["n"] == 0


def _report(r1: float, intent: float, transfer: float) -> dict:
  """A report.json with the sections the study reads (docs/report_schema.md)."""
  direction = {"recall_at_1": r1, "recall_at_10": min(1.0, 3 * r1)}
  probe = {"speech": intent, "text": 1.0, "text_to_speech_transfer": transfer}
  return {
    "retrieval": {
      "speech_to_text": direction,
      "text_to_speech": direction,
      "paired_cosine": 0.4,
      "unpaired_cosine": 0.0,
    },
    "geometry": {"modality_gap": 0.5},
    "probing": {"intent": probe, "topic": {**probe, "speech": 1.0}},
    "zero_shot": {
      "synthetic": {"accuracy": 0.25},
      "fsdd": {"held_out_accuracy": 0.5, "held_out_speakers": ["nicolas"]},
    },
  }


def test_aggregate_fake_reports():
  reports = {
    ("a_distill", "ours"): {s: _report(r, 0.2, 0.1) for s, r in enumerate([0.5, 0.6, 0.7])},
    ("b_asr_distill", "ours"): {s: _report(r, 0.6, 0.3) for s, r in enumerate([0.6, 0.8, 0.7])},
    ("a_distill", "paper"): {0: _report(0.1, 0.2, 0.1)},
  }
  curves = {
    ("a_distill", "ours"): {0: [(40, 0.1), (80, 0.3)], 1: [(40, 0.2), (80, 0.5)]},
    ("b_asr_distill", "ours"): {0: [(120, 0.4)], 1: [(80, 0.2), (120, 0.6)]},
  }
  out = study_stats.aggregate(reports, curves, baseline="a_distill")
  a = out["cells"]["a_distill-ours"]
  assert a["regime"] == "a_distill" and a["family"] == "ours" and a["seeds"] == [0, 1, 2]
  assert a["metrics"]["s2t_r1"]["mean"] == pytest.approx(0.6)
  assert a["metrics"]["s2t_r1"]["values"] == {"0": 0.5, "1": 0.6, "2": 0.7}
  assert a["metrics"]["probe_speech"]["mean"] == pytest.approx((0.2 + 1.0) / 2)  # Task mean.
  assert a["metrics"]["probe_speech.intent"]["mean"] == pytest.approx(0.2)  # Per task.
  assert a["metrics"]["zero_shot_fsdd_unseen"]["mean"] == 0.5
  assert list(a["metrics"])[:2] == ["s2t_r1", "s2t_r10"]
  b_minus_a = out["paired"]["ours"]["b_asr_distill"]
  assert b_minus_a["s2t_r1"]["p_value"] == pytest.approx(1 - (3 / 5) ** 0.5)
  assert b_minus_a["probe_transfer"]["mean_diff"] == pytest.approx(0.2)
  assert b_minus_a["probe_text"]["p_value"] is None  # Same teacher text in every run.
  assert "paper" not in out["paired"]  # No other regime in that family.
  assert out["paired"]["ours"].keys() == {"b_asr_distill"}  # Not the baseline against itself.
  assert out["curves"]["a_distill-ours"]["steps"] == [40, 80]
  assert out["curves"]["a_distill-ours"]["mean"] == pytest.approx([0.15, 0.4])
  assert out["curves"]["b_asr_distill-ours"]["steps"] == [120]  # Only where every seed has one.
  assert out["unseen_voices"] == ["nicolas"]
  # Only the headline metrics some report has: these have no real-speech section.
  real = {"real_librispeech_s2t_r1", "real_an4_s2t_r1"}
  assert set(out["metrics"]) == set(study_stats.METRICS) - real


def test_missing_report_sections_are_none_not_errors():
  metrics = study_stats.metrics_of({"retrieval": _report(0.5, 0, 0)["retrieval"]})
  assert metrics["s2t_r1"] == 0.5
  assert metrics["zero_shot_intents"] is None and metrics["probe_speech"] is None


def test_validation_curve_of_a_resumed_run_keeps_the_latest_value_per_step(tmp_path):
  """A resumed run evaluates the steps after its last checkpoint again (here: resumed at 10)."""
  points = [(10, 0.1), (20, 0.2), (20, 0.25), (30, 0.3)]
  evaluators = [{"step": step, study_runs.CURVE: value, "other": 1.0} for step, value in points]
  (tmp_path / "train_history.json").write_text(json.dumps({"evaluators": evaluators}))
  curve = study_runs.evaluator_curve(str(tmp_path), study_runs.CURVE)
  assert curve == [(10, pytest.approx(0.1)), (20, pytest.approx(0.25)), (30, pytest.approx(0.3))]
  (tmp_path / "train_history.json").write_text(json.dumps({"train": [], "valid": []}))
  with pytest.raises(FileNotFoundError, match="no evaluator figures .* older stalign"):
    study_runs.evaluator_curve(str(tmp_path), study_runs.CURVE)


# ----------------------------------------------------------------- end to end


def _study(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "stalign.study", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
  """`configs/study.py:quick` into a fresh folder, on a few real FSDD clips for zero-shot."""
  source = real_speech_dir("fsdd")
  root = tmp_path_factory.mktemp("study")
  fsdd = root / "fsdd" / "recordings"
  fsdd.mkdir(parents=True)
  for speaker in ("jackson", "nicolas"):
    for digit in range(10):
      name = f"{digit}_{speaker}_0.wav"
      os.symlink(os.path.join(source, "recordings", name), fsdd / name)
  args = (
    "--config=configs/study.py:quick",
    f"--workdir={root / 'study'}",
    f"--config.data_dir={root / 'data'}",
    f"--config.data.fsdd_dir={root / 'fsdd'}",
  )
  out = _study(*args)
  assert out.returncode == 0, out.stderr[-4000:]
  return root / "study", args, out


@pytest.mark.slow
def test_quick_study_writes_every_cell_and_seed_and_a_rerun_trains_nothing(quick_study):
  workdir, args, out = quick_study
  config = study_config.get_config("quick")
  runs = study_plan.plan(config, str(workdir))
  lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
  assert len(lines) == len(runs) == 2 * (1 + 8), out.stdout  # One line per run.
  assert "study.md" in out.stdout and "Traceback" not in out.stderr, out.stderr[-2000:]

  result = json.load(open(workdir / "study.json"))
  assert set(result["cells"]) == {
    f"{r}-{f}" for r in config.study.regimes for f in config.study.families
  }
  for cell in result["cells"].values():
    assert cell["seeds"] == [0, 1]
    for name in result["metrics"]:
      assert cell["metrics"][name]["n"] == 2, (cell["regime"], name)
  # The tiny recipe has no real speakers: every other headline metric is there.
  assert set(study_stats.METRICS) - set(result["metrics"]) == {
    "real_librispeech_s2t_r1", "real_an4_s2t_r1"
  }  # fmt: skip
  assert set(result["paired"]) == {"ours", "paper"}
  assert set(result["paired"]["ours"]) == {"b_asr_distill", "c_multitask", "d_asr_multitask"}
  assert result["budget"] == {
    "total_steps": 8, "pretrain_steps": 4, "finetune_steps": 4, "batch_size": 16,
    "curve_every_steps": 4,
  }  # fmt: skip
  # Valid R@1 at every 4th step of the whole budget: warm-started regimes from the pretraining on.
  assert result["curves"]["a_distill-ours"]["steps"] == [4, 8]
  assert result["curves"]["b_asr_distill-paper"]["steps"] == [8]
  assert set(result["pretrain"]) == {"0", "1"}
  assert result["unseen_voices"] == ["jackson", "nicolas"]  # The tiny recipe trains on no FSDD.
  for file in result["figures"].values():
    assert os.path.getsize(workdir / file) > 0
  assert set(result["figures"]) == set(result["metrics"]) | {"valid_r1"}
  md = open(workdir / "study.md").read()
  for cell in result["cells"]:
    assert f"| {cell} |" in md
  assert "Loss family `paper`" in md and "p=" in md

  before = testdata.mtimes(workdir)
  again = _study(*args)
  assert again.returncode == 0, again.stderr[-4000:]
  skipped = [line for line in again.stdout.splitlines() if line.startswith("[")]
  assert len(skipped) == len(runs)
  assert all("skipped" in line or "done before" in line for line in skipped), again.stdout
  after = testdata.mtimes(workdir)
  changed = {os.path.relpath(p, workdir) for p in after if before.get(p) != after[p]}
  assert all(p.startswith("study") for p in changed), changed  # Only the aggregates rewritten.


def test_help_explains_the_study():
  out = _study("--helpshort", timeout=300)
  assert "python -m stalign.study --config=configs/study.py --workdir=runs/study" in out.stdout
  for flag in ("--config", "--workdir", "--compilation_cache"):
    assert flag in out.stdout


def test_a_run_config_without_study_keys_is_one_line(tmp_path):
  out = _study("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", timeout=300)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
    "error: --config has no `study` keys: use configs/study.py (or :quick)"
  ]


@pytest.mark.slow
def test_study_notebook_shows_the_tables_and_every_plot(quick_study, monkeypatch):
  import nbclient
  import nbformat

  workdir, _, _ = quick_study
  nb = nbformat.read(os.path.join(REPO, "notebooks", "study.ipynb"), as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # Saved cleared.
  monkeypatch.setenv("STALIGN_STUDY", str(workdir))  # Inherited by the kernel.
  nbclient.NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}
  ).execute()
  outputs = [o for c in nb.cells for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
  # A bar chart per metric the study has and the curves.
  metrics = json.load(open(os.path.join(workdir, "study.json")))["metrics"]
  assert len(images) == len(metrics) + 1
  shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
  assert "| a_distill-ours |" in shown and "Loss family `paper`" in shown
