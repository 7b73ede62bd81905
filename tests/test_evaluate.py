"""Evaluation end to end on a tiny untrained run: every section, the report files, CLI, notebook."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from stalign import evaluate
from stalign import report

from test_api import make_run  # The run-folder builder the API tests use.
from testdata import FSDD_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_fsdd(tmp_path_factory):
  """Two takes of every digit by two speakers, one of them the held-out nicolas."""
  root = tmp_path_factory.mktemp("fsdd")
  (root / "recordings").mkdir()
  for speaker in ("jackson", "nicolas"):
    for digit in range(10):
      for take in range(2):
        name = f"{digit}_{speaker}_{take}.wav"
        os.symlink(os.path.join(FSDD_DIR, "recordings", name), root / "recordings" / name)
  return str(root)


@pytest.fixture(scope="module")
def evaluated(prepared_config, small_fsdd, tmp_path_factory):
  config = ml_collections.ConfigDict(prepared_config.to_dict())
  config.eval.evaluators = ("retrieval", "geometry", "probing")
  workdir = make_run(config, str(tmp_path_factory.mktemp("eval") / "run"))
  return workdir, evaluate.evaluate(config, workdir, fsdd_dir=small_fsdd)


def test_report_json_has_the_documented_keys(evaluated):
  workdir, results = evaluated
  with open(os.path.join(workdir, "report.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))  # What is returned is what is written.
  assert saved["schema_version"] == report.SCHEMA_VERSION and saved["step"] == 7
  assert saved["split"] == "test" and saved["utterances"] == 20
  for direction in ("speech_to_text", "text_to_speech"):
    assert 0 <= saved["retrieval"][direction]["recall_at_1"] <= 1
  assert 0 <= saved["geometry"]["modality_gap"] <= 2
  digit = saved["probing"]["digit"]
  for key in ("speech", "text", "text_to_speech_transfer", "speech_to_text_transfer", "chance"):
    assert 0 <= digit[key] <= 1
  assert len(digit["layers"]) == 2  # Frontend + the tiny model's one block.
  assert "synthetic" not in saved["zero_shot"]  # A manifest-sourced run has no held-out intents.
  fsdd = saved["zero_shot"]["fsdd"]
  assert fsdd["utterances"] == 40 and set(fsdd["per_group"]) == {"jackson", "nicolas"}
  assert fsdd["held_out_speakers"] == ["nicolas"]
  assert fsdd["held_out_accuracy"] == fsdd["per_group"]["nicolas"]["accuracy"]


def test_report_markdown_and_figures(evaluated):
  workdir, results = evaluated
  md = open(os.path.join(workdir, "report.md")).read()
  assert "speech to text R@1" in md and "zero-shot FSDD digits" in md and "nicolas (held out)" in md
  assert set(results["figures"]) == {"similarity_matrix", "pca", "probes", "probe_layers"}
  for name in results["figures"].values():
    assert open(os.path.join(workdir, name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"({name})" in md


def test_headline_keeps_retrieval_rows_and_adds_sections():
  results = {
    "split": "test",
    "utterances": 3,
    "zero_shot": {},
    "retrieval": {
      d: {
        "recall_at_1": 0.5,
        "recall_at_5": 1.0,
        "recall_at_10": 1.0,
        "gallery": 3,
        "median_rank": 1.0,
      }
      for d in ("speech_to_text", "text_to_speech")
    }
    | {"paired_cosine": 0.5, "unpaired_cosine": 0.1, "gallery_difficulty": 0.3},
    "probing": {
      "intent": {"speech": 0.9, "text": 1.0, "text_to_speech_transfer": 0.8, "chance": 0.1}
    },
  }
  text = report.headline(results)
  assert "| speech to text R@1 / R@5 / R@10 | 0.500 / 1.000 / 1.000" in text
  assert "text to speech R@1" in text
  assert (
    "| probe intent: speech / text / text->speech | 0.900 / 1.000 / 0.800  (chance 0.100) |" in text
  )
  assert "zero-shot" not in text


def test_cli_defaults_to_the_runs_config_and_prints_per_speaker(evaluated, small_fsdd):
  workdir, _ = evaluated
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "stalign.evaluate",
      f"--workdir={workdir}",
      f"--fsdd_dir={small_fsdd}",
      "--evaluators=retrieval",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert (
    "speech to text R@1" in out.stdout and "nicolas" in out.stdout and "(held out)" in out.stdout
  )
  saved = json.load(open(os.path.join(workdir, "report.json")))
  assert "probing" not in saved and "fsdd" in saved["zero_shot"]


def test_analysis_notebook_runs_on_a_tiny_run(evaluated):
  import nbclient
  import nbformat

  workdir, _ = evaluated
  nb = nbformat.read(os.path.join(REPO, "notebooks", "analysis.ipynb"), as_version=4)
  os.environ["STALIGN_RUN"] = workdir  # Inherited by the kernel.
  try:
    nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}
    ).execute()
  finally:
    del os.environ["STALIGN_RUN"]
  images = sum(
    o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", [])
  )
  assert images >= 3


def test_evaluation_only_reads_and_names_the_command_for_a_missing_split(
  evaluated, prepared_config
):
  """Evaluators never build data: a folder without the zero-shot split says how to build it."""
  import stalign

  workdir, _ = evaluated
  tfrecords_dir = os.path.join(prepared_config.data_dir, "tfrecords")
  before = sorted(os.listdir(tfrecords_dir))
  model = stalign.load(workdir)
  with pytest.raises(FileNotFoundError, match="zero_shot.*--stages=data"):
    evaluate.zero_shot_synthetic(model)
  assert sorted(os.listdir(tfrecords_dir)) == before
