"""Evaluation end to end on a tiny untrained run: every section, the report files, CLI, notebook."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import soundfile as sf

import stalign
from stalign import evaluate
from stalign import prepare
from stalign import report
from stalign.data import sources
from stalign.data import text
from stalign.evaluators import zero_shot

from testdata import make_run
from testdata import real_speech_dir
from testdata import write_an4
from testdata import write_librispeech

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_fsdd(tmp_path_factory):
  """Two takes of every digit by two speakers, one of them the held-out nicolas."""
  source = real_speech_dir("fsdd")
  root = tmp_path_factory.mktemp("fsdd")
  (root / "recordings").mkdir()
  for speaker in ("jackson", "nicolas"):
    for digit in range(10):
      for take in range(2):
        name = f"{digit}_{speaker}_{take}.wav"
        os.symlink(os.path.join(source, "recordings", name), root / "recordings" / name)
  return str(root)


def _evaluated_run(prepared_config, fsdd_dir: str, workdir: str) -> tuple[str, dict]:
  """A fresh run folder evaluated with every evaluator and FSDD zero-shot."""
  config = ml_collections.ConfigDict(prepared_config.to_dict())
  config.eval.evaluators = ("retrieval", "geometry", "probing")
  make_run(config, workdir)
  return workdir, evaluate.evaluate(config, workdir, fsdd_dir=fsdd_dir)


@pytest.fixture(scope="module")
def evaluated(prepared_config, small_fsdd, tmp_path_factory):
  return _evaluated_run(prepared_config, small_fsdd, str(tmp_path_factory.mktemp("eval") / "run"))


def _schema() -> tuple[list[list[str]], dict[str, str]]:
  """docs/report_schema.md as (key patterns of its `key | meaning` tables, {key: present when}).

  A pattern is a dotted key split at the dots, `{a,b}` expanded; `<name>` stands for any key.
  """
  keys, conditions, table = [], {}, None
  for line in open(os.path.join(REPO, "docs", "report_schema.md")):
    if not line.startswith("|"):
      table = None
      continue
    first, second = [cell.strip() for cell in line.strip().strip("|").split("|")][:2]
    if first == "key":
      table = second
    for name in re.findall(r"`([^`]+)`", first):
      if table == "meaning":
        keys += [key.split(".") for key in _expand(name)]
      elif table == "present when":
        conditions[name] = second
  return keys, conditions


def _expand(key: str) -> list[str]:
  """`a.{b,c}.d` -> [`a.b.d`, `a.c.d`]."""
  group = re.search(r"\{([^}]*)\}", key)
  if not group:
    return [key]
  return [
    k
    for choice in group[1].split(",")
    for k in _expand(key[: group.start()] + choice + key[group.end() :])
  ]


def _missing(tree, pattern: list[str], where: str = "") -> list[str]:
  """Where `report` lacks `pattern`; a `<name>` level needs a key, and every key there matches."""
  if not pattern:
    return []
  head, rest = pattern[0], pattern[1:]
  if not isinstance(tree, dict) or not tree:
    return [where.rstrip(".") + f" has no {head}"]
  out = []
  for key in list(tree) if head.startswith("<") else [head]:
    out += _missing(tree[key], rest, f"{where}{key}.") if key in tree else [where + key]
  return out


def _leaves(tree, path: tuple = ()) -> list[tuple]:
  if not isinstance(tree, dict) or not tree:
    return [path]
  return [leaf for key, value in tree.items() for leaf in _leaves(value, path + (key,))]


def _names(pattern: list[str], path: tuple) -> bool:
  """Whether `pattern` documents `path` (a documented key documents everything under it)."""
  return len(pattern) <= len(path) and all(
    p == k or p.startswith("<") for p, k in zip(pattern, path)
  )


def test_report_json_has_exactly_the_documented_keys(evaluated):
  """Parsed from docs/report_schema.md, so the schema and the code cannot drift apart."""
  workdir, results = evaluated
  with open(os.path.join(workdir, "report.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))  # What is returned is what is written.
  keys, conditions = _schema()
  assert {k[0] for k in keys} >= {"split", "figures", "retrieval", "geometry", "probing"}
  # This run: every evaluator, FSDD recordings, a manifest source (no synthetic corpus), no skips.
  absent = {"zero_shot.synthetic", "skipped", "real_speech", "real_speech.ctc_targets"}
  absent |= {"real_speech.all.ctc", "real_speech.domains.<domain>.ctc"}
  assert set(conditions) - absent == {
    "retrieval",
    "geometry",
    "probing",
    "figures.probes",
    "figures.probe_layers",
    "zero_shot.fsdd",
    "zero_shot.fsdd.ctc",
  }
  for key in absent:
    assert _missing(saved, key.split(".")), f"{key} is in a manifest run's report"
  required = [k for k in keys if not any(_names(a.split("."), k) for a in absent)]
  missing = [m for k in required for m in _missing(saved, k)]
  assert not missing, f"documented but not in report.json: {missing}"
  undocumented = [".".join(p) for p in _leaves(saved) if not any(_names(k, p) for k in keys)]
  assert not undocumented, f"in report.json but not in docs/report_schema.md: {undocumented}"


def test_report_json_values_match_this_run_and_lie_in_documented_ranges(evaluated, small_fsdd):
  workdir, saved = evaluated
  assert saved["schema_version"] == report.SCHEMA_VERSION and saved["step"] == 7
  assert saved["split"] == "test" and saved["utterances"] == 20
  # 20 clips of the ten digit sentences: each direction's recalls are whole counts of its
  # queries, rise with k, and reach 1 at k = 10 where the gallery has only ten sentences.
  sizes = {"speech_to_text": (20, 10), "text_to_speech": (10, 20)}
  for direction, (queries, gallery) in sizes.items():
    r = saved["retrieval"][direction]
    assert (r["queries"], r["gallery"]) == (queries, gallery)
    recalls = [r[f"recall_at_{k}"] for k in (1, 5, 10)]
    assert recalls == sorted(recalls) and r["recall_at_1"] <= r["mrr"] <= 1
    for recall in recalls:
      assert recall * queries == pytest.approx(round(recall * queries))
  assert saved["retrieval"]["speech_to_text"]["recall_at_10"] == 1
  # Two evaluators compute the paired cosine on their own.
  assert saved["geometry"]["paired_cosine"] == pytest.approx(
    saved["retrieval"]["paired_cosine"], abs=1e-5
  )
  assert 0 <= saved["geometry"]["modality_gap"] <= 2
  digit = saved["probing"]["digit"]
  assert (digit["classes"], digit["examples"]) == (10, 20)
  for key in ("speech", "text", "text_to_speech_transfer", "speech_to_text_transfer", "chance"):
    assert digit[key] * 20 == pytest.approx(round(digit[key] * 20)), key  # Whole examples.
  assert len(digit["layers"]) == 2  # Frontend + the tiny model's one block.
  fsdd = saved["zero_shot"]["fsdd"]
  assert fsdd["utterances"] == 40 and set(fsdd["per_group"]) == {"jackson", "nicolas"}
  # The prepared train split holds george and jackson: nicolas is the one voice never trained on.
  assert fsdd["held_out_speakers"] == ["nicolas"] and fsdd["held_out_from"] == "training_data"
  assert fsdd["held_out_accuracy"] == fsdd["per_group"]["nicolas"]["accuracy"]
  assert fsdd["seen_accuracy"] == fsdd["per_group"]["jackson"]["accuracy"]
  # The confusion matrix holds every clip once (four per digit) and the accuracies follow from it.
  confusion = np.array(fsdd["confusion"])
  assert fsdd["chance"] == 0.1 and confusion.sum(axis=1).tolist() == [4] * 10
  assert fsdd["accuracy"] == pytest.approx(np.trace(confusion) / 40)
  assert list(fsdd["per_class"].values()) == pytest.approx(np.diag(confusion) / 4)
  correct = sum(g["accuracy"] * g["utterances"] for g in fsdd["per_group"].values())
  assert fsdd["accuracy"] == pytest.approx(correct / 40)
  # The tiny config trains its CTC head on characters: every speaker's ten words are listed.
  ctc = fsdd["ctc"]
  assert ctc["targets"] == "chars" and set(ctc["per_group"]) == {"jackson", "nicolas"}
  for speaker in ("jackson", "nicolas"):
    heard = ctc["most_common"][speaker]
    assert sorted(heard) == sorted(sources.DIGIT_WORDS)
    assert all(sum(n for _, n in heard[w]) <= 2 for w in heard)  # Two takes of each digit.
  # nicolas's figures are his own clips' transcripts, recomputed here through the API.
  clips = sorted(glob.glob(os.path.join(small_fsdd, "recordings", "*_nicolas_*.wav")))
  said = [sources.DIGIT_WORDS[int(os.path.basename(c)[0])] for c in clips]
  heard = stalign.load(workdir).transcribe(clips)
  errors = sum(text.edit_distance(h, w) for h, w in zip(heard, said))
  assert ctc["per_group"]["nicolas"]["error_rate"] == errors / sum(map(len, said))


def test_fsdd_clips_longer_than_a_window_are_embedded_and_transcribed_as_the_api_does(
  evaluated, small_fsdd, tmp_path
):
  """Digits take one forward pass for embedding and transcript; a folder holding a clip longer
  than a training clip takes the API's window-by-window paths instead, with the same figures."""
  model = stalign.load(evaluated[0])
  recordings = tmp_path / "fsdd" / "recordings"
  recordings.mkdir(parents=True)
  short = os.path.join(small_fsdd, "recordings", "4_nicolas_0.wav")
  os.symlink(short, recordings / "4_nicolas_0.wav")
  wave, rate = sf.read(os.path.join(small_fsdd, "recordings", "3_nicolas_0.wav"), dtype="float32")
  repeats = int(np.ceil(1.5 * model.config.features.max_seconds * rate / len(wave)))
  sf.write(recordings / "3_nicolas_0.wav", np.tile(wave, repeats), rate)
  out = evaluate.zero_shot_fsdd(model, str(tmp_path / "fsdd"))
  paths = [str(recordings / "3_nicolas_0.wav"), short]
  long_heard, short_heard = model.transcribe(paths)
  assert out["ctc"]["most_common"]["nicolas"] == {
    "three": [[long_heard, 1]],
    "four": [[short_heard, 1]],
  }
  classes = zero_shot.class_embeddings(
    model.encode_text, list(sources.DIGIT_WORDS), model.config.eval.zero_shot_templates
  )
  predicted = zero_shot.predict(model.encode_speech(paths), classes)
  assert out["accuracy"] == np.mean(np.asarray(predicted) == [3, 4])


def test_transcript_errors_count_edits_per_reference_character_and_per_group():
  got = evaluate.transcript_errors(
    ["three", "se", "tree", "two", "", "two"],
    ["three", "three", "three", "two", "two", "two"],
    ["a", "b", "b", "a", "b", "b"],
    most_common=2,
  )
  # b: "se" vs "three" 4 edits, "tree" 1, "" vs "two" 3, exact 0 -> 8 over 5 + 5 + 3 + 3.
  assert got["per_group"]["b"] == {"error_rate": 8 / 16, "exact": 1 / 4}
  assert got["per_group"]["a"] == {"error_rate": 0.0, "exact": 1.0}
  assert got["error_rate"] == 8 / 24 and got["exact"] == 3 / 6
  assert got["most_common"]["b"] == {
    "three": [["se", 1], ["tree", 1]],
    "two": [["", 1], ["two", 1]],
  }


def test_report_markdown_and_figures(evaluated):
  workdir, results = evaluated
  md = open(os.path.join(workdir, "report.md")).read()
  assert "speech to text R@1" in md and "zero-shot FSDD digits" in md and "nicolas (held out)" in md
  assert "CTC error rate" in md and "What the CTC head hears" in md
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
  assert "zero-shot" not in text and "CTC" not in text
  results["zero_shot"]["fsdd"] = {
    "accuracy": 0.9,
    "chance": 0.1,
    "utterances": 30,
    "held_out_speakers": ["nicolas"],
    "held_out_accuracy": 0.7,
    "ctc": {
      "per_group": {s: {"error_rate": r} for s, r in [("a", 0.02), ("b", 0.01), ("nicolas", 0.5)]}
    },
  }
  text = report.headline(results)
  assert (
    "| zero-shot FSDD digits (real speech) | 0.900  (chance 0.100, 30 clips; held out nicolas "
    "0.700) |" in text
  )
  assert (
    "| FSDD digits, CTC character error rate | nicolas 0.500; trained voices 0.010-0.020 |" in text
  )


def _evaluate_cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "stalign.evaluate", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_on_another_set_writes_a_named_report_and_keeps_report_json(
  evaluated, small_fsdd, tmp_path
):
  workdir = str(tmp_path / "run")
  shutil.copytree(evaluated[0], workdir)  # Leaves the shared run's report to the other tests.
  own = open(os.path.join(workdir, "report.json")).read()
  figures = sorted(f for f in os.listdir(workdir) if f.endswith(".png"))
  refused = _evaluate_cli(f"--workdir={workdir}", f"--fsdd_dir={small_fsdd}")
  assert refused.returncode == 2 and "--report_name" in refused.stderr
  assert len(refused.stderr.strip().splitlines()) == 1 and refused.stderr.startswith("error: ")
  out = _evaluate_cli(
    f"--workdir={workdir}",
    f"--fsdd_dir={small_fsdd}",
    "--evaluators=retrieval",
    "--report_name=small_fsdd",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert (
    "speech to text R@1" in out.stdout and "nicolas" in out.stdout and "(held out)" in out.stdout
  )
  assert out.stdout.strip().endswith(os.path.join(workdir, "small_fsdd.md"))
  assert open(os.path.join(workdir, "report.json")).read() == own
  saved = json.load(open(os.path.join(workdir, "small_fsdd.json")))
  assert "probing" not in saved and "fsdd" in saved["zero_shot"]
  assert saved["figures"] == {
    "similarity_matrix": "small_fsdd_similarity.png",
    "pca": "small_fsdd_pca.png",
  }
  for name in saved["figures"].values():
    assert f"({name})" in open(os.path.join(workdir, "small_fsdd.md")).read()
  assert sorted(f for f in os.listdir(workdir) if f.endswith(".png")) == sorted(
    figures + list(saved["figures"].values())
  )
  bad = _evaluate_cli(f"--workdir={workdir}", "--report_name=../x.json")
  assert bad.returncode == 2 and "report name" in bad.stderr


def test_unseen_voices_come_from_the_training_data_not_the_config(
  prepared_config, tmp_path, caplog
):
  config = ml_collections.ConfigDict(prepared_config.to_dict())
  config.eval.fsdd_held_out_speakers = ("jackson",)  # Wrong: jackson is in the training data.
  assert evaluate.trained_speakers(config) == ["george", "jackson"]
  assert evaluate.held_out_speakers(config, ["jackson", "lucas", "nicolas"]) == (
    ["lucas", "nicolas"],
    "training_data",
  )
  # A data folder written before summaries listed speakers: the config's list, with a warning.
  old = tmp_path / "old"
  shutil.copytree(os.path.join(prepared_config.data_dir, "tfrecords"), old / "tfrecords")
  summary = json.load(open(old / "tfrecords" / "train.summary.json"))
  del summary["speakers"]
  json.dump(summary, open(old / "tfrecords" / "train.summary.json", "w"))
  config.data_dir = str(old)
  assert evaluate.trained_speakers(config) is None
  assert evaluate.held_out_speakers(config, ["jackson", "nicolas"]) == (["jackson"], "config")
  assert "eval.fsdd_held_out_speakers" in caplog.text


def test_analysis_notebook_runs_on_a_tiny_run_and_shows_every_figure(
  prepared_config, small_fsdd, tmp_path, monkeypatch
):
  """On a run and evaluation of its own, with probing: what it shows depends on no other test."""
  import nbclient
  import nbformat

  workdir, _ = _evaluated_run(prepared_config, small_fsdd, str(tmp_path / "run"))
  nb = nbformat.read(os.path.join(REPO, "notebooks", "analysis.ipynb"), as_version=4)
  monkeypatch.setenv("STALIGN_RUN", workdir)  # Inherited by the kernel.
  nbclient.NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}
  ).execute()
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors, errors

  def cell(marker: str):
    [found] = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    return found

  def images(marker: str) -> int:
    return sum(
      o.output_type == "display_data" and "image/png" in o.data for o in cell(marker).outputs
    )

  assert images("report.similarity_figure(emb)") == 2  # Similarity matrix and PCA.
  assert images("report.probes_figure(probing)") == 2  # Probes and probes per layer.
  assert images("zero-shot {name}") == 1  # FSDD confusion.
  printed = "".join(o.get("text", "") for o in cell("report.probes_figure(probing)").outputs)
  assert printed.startswith("digit "), printed
  searched = "".join(o.get("text", "") for o in cell("search.top_k(").outputs)
  assert "CTC head hears: '" in searched and "the nearest of" in searched, searched


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


def test_real_speech_of_unseen_speakers_is_evaluated_per_domain_and_reported(
  prepared_config, tmp_path
):
  """A data folder built before real speech gains the real_test split (the rest reused); the
  report then has the "real speech, unseen speakers" section, per domain, with documented keys."""
  config = ml_collections.ConfigDict(prepared_config.to_dict())
  shutil.copytree(prepared_config.data_dir, tmp_path / "data")
  config.data_dir = str(tmp_path / "data")
  config.data.librispeech_dir = write_librispeech(
    str(tmp_path / "libri"),
    {"32-1": ["A B"], "1088-3": ["HE SAID SO", "SHE DID NOT"], "1737-4": ["ONE", "TWO"]},
  )
  config.data.an4_manifest = write_an4(
    str(tmp_path / "an4"), {"fash": ["yes"], "mcel": ["stop", "go"], "fejs": ["go", "no"]}
  )
  config.data.real_sources = ("librispeech", "an4")
  config.data.real_held_out.valid = ()
  config.data.real_held_out.test = ("librispeech/1088", "librispeech/1737", "an4/mcel", "an4/fejs")
  config.eval.zero_shot = ()
  workdir = make_run(config, str(tmp_path / "run"))
  # Before the data stage built it, the section says why it is absent.
  results = evaluate.evaluate(config, workdir, evaluator_names=("retrieval",))
  assert "real_speech" not in results
  assert "no real_test split" in results["skipped"]["real_speech"]
  assert "--stages=data" in results["skipped"]["real_speech"]

  prepare.prepare(config)
  results = evaluate.evaluate(config, workdir, evaluator_names=("retrieval",))
  real = results["real_speech"]
  assert real["split"] == "real_test" and real["seen_in_training"] == []
  assert real["speakers"] == sorted(config.data.real_held_out.test)
  counts = {g: real["domains"][g] for g in ("librispeech", "an4")} | {"all": real["all"]}
  # "go" is said by both AN4 speakers: one sentence of the gallery, two clips.
  assert {g: (c["clips"], c["sentences"], c["speakers"]) for g, c in counts.items()} == {
    "librispeech": (4, 4, 2),
    "an4": (4, 3, 2),
    "all": (8, 7, 4),
  }
  an4 = real["domains"]["an4"]["retrieval"]
  assert an4["speech_to_text"]["gallery"] == 3 and an4["text_to_speech"]["gallery"] == 4
  assert real["ctc_targets"] == "chars" and real["all"]["ctc"]["error_rate"] > 0  # Untrained.
  # The unit test of transcript_errors holds the arithmetic; here, the groups' weighting.
  rates = [real["domains"][g]["ctc"]["error_rate"] for g in ("librispeech", "an4")]
  assert min(rates) <= real["all"]["ctc"]["error_rate"] <= max(rates)

  saved = json.load(open(os.path.join(workdir, "report.json")))
  keys, _ = _schema()
  documented = [k for k in keys if k[0] == "real_speech"]
  assert not [m for k in documented for m in _missing(saved, k)]
  undocumented = [
    p for p in _leaves(saved["real_speech"]) if not any(_names(k[1:], p) for k in documented)
  ]
  assert not undocumented, f"in report.json but not in docs/report_schema.md: {undocumented}"
  md = open(os.path.join(workdir, "report.md")).read()
  assert "## Real speech, unseen speakers" in md and "| an4 | 4 | 3 | 2 |" in md
  assert "| real speech, unseen speakers: speech->text R@1 / R@10, text->speech R@1 |" in md
  assert "(8 clips, 7 sentences, 4 speakers; CTC error rate" in md


def test_real_speech_table_shows_each_domain_and_a_group_of_one_sentence(tmp_path):
  group = lambda clips, s2t, t2s: {
    "clips": clips,
    "sentences": 1 if s2t is None else clips,
    "speakers": 2,
    "retrieval": None
    if s2t is None
    else {
      "speech_to_text": {"recall_at_1": s2t, "recall_at_10": 1.0},
      "text_to_speech": {"recall_at_1": t2s},
    },
  }
  results = {
    "split": "test",
    "utterances": 3,
    "zero_shot": {},
    "real_speech": {
      "split": "real_test",
      "speakers": ["an4/fejs", "an4/mcel", "librispeech/1737"],
      "seen_in_training": ["an4/mcel"],
      "all": group(10, 0.5, 0.25),
      "domains": {"an4": group(4, None, None), "librispeech": group(6, 0.75, 0.5)},
    },
  }
  assert (
    "| real speech, unseen speakers: speech->text R@1 / R@10, text->speech R@1 | "
    "0.500 / 1.000 / 0.250  (10 clips, 10 sentences, 2 speakers) |" in report.headline(results)
  )
  report.write(str(tmp_path), results)
  md = (tmp_path / "report.md").read_text()
  assert "| an4 | 4 | 1 | 2 | - / - | - |" in md
  assert "| librispeech | 6 | 6 | 2 | 0.750 / 1.000 | 0.500 |" in md
  assert "| all | 10 | 10 | 2 | 0.500 / 1.000 | 0.250 |" in md
  assert "**Not unseen**: the train split holds an4/mcel." in md
