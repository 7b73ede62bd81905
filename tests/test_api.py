"""The embedding API and its CLIs, on an untrained tiny student (what is checked is plumbing)."""

import json
import math
import os
import shutil
import subprocess
import sys

from absl import logging as absl_logging
from flax import nnx
import jax
import numpy as np
import pytest
import soundfile as sf

import stalign
from stalign import api
from stalign import speech_input
from stalign import utils
from stalign.data import audio
from stalign.data import features
from stalign.data import layout
from stalign.data import text
from stalign.data import tfrecords
from stalign.models import teacher as teacher_lib

from testdata import fsdd_files
from testdata import with_buckets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_accepts_run_checkpoints_or_step_folder(tiny_run, model):
  assert model.step == 7
  for path in (os.path.join(tiny_run, "checkpoints"), os.path.join(tiny_run, "checkpoints", "7")):
    other = stalign.load(path)
    assert other.step == 7
    np.testing.assert_array_equal(
      jax.tree.leaves(other.params)[0], jax.tree.leaves(model.params)[0]
    )
  with pytest.raises(FileNotFoundError, match="no checkpoint 9"):
    stalign.load(tiny_run, step=9)


def test_speech_from_files_waveforms_and_tfrecords_agree(model, prepared_config):
  path = json.loads(open(prepared_config.data.manifests.test).readline())["audio_filepath"]
  wave, rate = sf.read(path, dtype="float32")
  assert rate == 8000  # FSDD: resampled to the model's 16 kHz on the way in.
  from_file, from_wave = model.encode_speech([path, wave], sample_rate=rate)
  np.testing.assert_allclose(from_file, from_wave, atol=1e-6)
  # The same front end as the TFRecord writer: identical frames, so identical embeddings.
  stored = next(
    r
    for r in tfrecords.iterate_records(layout.list_shards(prepared_config.data_dir, "test"))
    if r["id"] == "test.jsonl:1"
  )
  np.testing.assert_array_equal(model.features(model.load_waveform(path)), stored["features"])
  np.testing.assert_allclose(model.embed_features([stored["features"]])[0][0], from_file, atol=1e-5)
  # The recipe's front end removes a DC offset (features.remove_dc), at inference as in training.
  assert model.config.features.remove_dc
  shifted = model.encode_speech([wave + 0.05], sample_rate=rate)
  np.testing.assert_allclose(shifted[0], from_wave, atol=1e-2)  # Resampling edges, float16.


def test_text_is_centred_like_the_training_targets(model):
  raw = model.teacher.embed(["one", "two"])
  np.testing.assert_allclose(model.encode_text(["one", "two"]), raw - model.target_mean, atol=1e-6)
  assert np.abs(model.target_mean).sum() > 0


_FIXTURE = os.path.join(REPO, "tests", "fixtures", "teacher_reference.npz")


def test_teacher_space_text_equals_sentence_transformers_encode(model, prepared_config):
  """Unicode, empty text and text past sentence-transformers' own 256-token limit included.

  The run's targets were cut at teacher.max_tokens (64 here); inference must not be.
  """
  reference = np.load(_FIXTURE)
  sentences = [str(s) for s in reference["sentences"]]
  assert "" in sentences and reference["token_counts"].max() > reference["max_seq_length"] == 256
  assert any(ord(c) > 0x2000 for s in sentences for c in s)  # Emoji, CJK, ...
  assert teacher_lib.from_config(prepared_config).max_tokens == prepared_config.teacher.max_tokens
  assert model.teacher.max_tokens == 256 > prepared_config.teacher.max_tokens
  got = model.encode_text(sentences, space="teacher")
  want = reference["embeddings"]
  cosine = np.sum(got * want, 1) / np.linalg.norm(want, axis=1)
  assert cosine.min() >= 0.9999, (cosine.min(), sentences[int(cosine.argmin())][:40])
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_teacher_space_speech_is_the_student_mapped_back_onto_the_teacher(model, prepared_config):
  path = json.loads(open(prepared_config.data.manifests.test).readline())["audio_filepath"]
  shared = model.encode_speech([path])
  teacher = model.encode_speech([path], space="teacher")
  mean = model.target_mean
  # The student gives the direction of its target t - mean; its length is the targets' RMS length.
  expected = utils.unit(utils.unit(shared) * math.sqrt(1 - mean @ mean) + mean)
  np.testing.assert_allclose(teacher, expected, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(teacher, axis=1), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="space='nope'"):
    model.encode_speech([path], space="nope")


def test_window_bounds_cover_long_audio_with_half_overlap():
  assert speech_input.window_bounds(100, 160) == [(0, 100)]
  assert speech_input.window_bounds(160, 160) == [(0, 160)]
  bounds = speech_input.window_bounds(1000, 160)
  assert bounds[0] == (0, 160) and bounds[-1][1] == 1000
  assert all(b - a == 160 for a, b in bounds[:-1]) and 80 < bounds[-1][1] - bounds[-1][0] <= 160
  assert all(b[0] == a[0] + 80 for a, b in zip(bounds, bounds[1:]))


def test_a_40_second_file_embeds_as_the_length_weighted_mean_of_its_windows(model, tmp_path):
  clips = [sf.read(f, dtype="float32")[0] for f in fsdd_files("george", range(0, 20))]
  wave = np.concatenate(clips * 3)[: 40 * 8000]
  assert wave.size == 40 * 8000  # FSDD is 8 kHz.
  path = str(tmp_path / "long.wav")
  sf.write(path, wave, 8000)
  fcfg = model.config.features
  with pytest.raises(audio.AudioError, match="max_seconds"):  # The cap stays for training data.
    audio.load_audio(path, fcfg.sample_rate, fcfg.max_seconds)
  [got] = model.encode_speech([path])
  windows = model.windows(model.load_waveform(path))
  assert (
    len(windows) == len(speech_input.window_bounds(40 * fcfg.sample_rate, int(1.5 * 16000))) > 50
  )
  assert max(len(w) for w in windows) <= features.bucket_lengths(model.config)[-1]
  weights = np.array([len(w) for w in windows], np.float32)
  want = weights @ model.embed_features(windows)[0] / weights.sum()
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.all(np.isfinite(got))


def test_transcripts_are_the_ctc_heads_best_path_whatever_the_input_form(model, prepared_config):
  path = json.loads(open(prepared_config.data.manifests.test).readline())["audio_filepath"]
  wave, rate = sf.read(path, dtype="float32")
  from_file, from_wave = model.transcribe([path, wave], sample_rate=rate)
  assert from_file == from_wave
  # Independently: the student's own forward pass on the clip padded to whole encoder frames.
  feats = model.features(model.load_waveform(path))
  subsample = model.config.model.subsample
  x = np.zeros((1, -(-len(feats) // subsample) * subsample, feats.shape[1]), np.float32)
  x[0, : len(feats)] = feats
  student = nnx.merge(model.graphdef, model.params)
  student.eval()
  out = student(jax.numpy.asarray(x), jax.numpy.asarray([len(feats)], np.int32))
  best = np.argmax(np.asarray(out["ctc_logits"][0]), axis=-1) * np.asarray(out["ctc_mask"][0])
  assert from_file == text.decode(best, model.config.features.ctc_targets)


def test_an_embedding_that_decodes_nothing_leaves_the_heads_output_on_the_device(model):
  feats = [np.random.default_rng(i).normal(size=(40 + 9 * i, model._feature_dim)) for i in range(3)]
  with_ctc = model._forward_batches(feats, ctc=True)
  without = model._forward_batches(feats, ctc=False)
  assert without[2] == [None] * 3
  vocab = text.vocab_size(model.config.features.ctc_targets)
  assert [lp.shape[1] for lp in with_ctc[2]] == [vocab] * 3
  np.testing.assert_allclose(np.stack(without[0]), np.stack(with_ctc[0]), rtol=1e-6, atol=1e-6)


def test_a_head_that_always_says_a_transcribes_each_window_of_long_audio_as_a(tiny_run, tmp_path):
  """A CTC head biased to "a" on every frame: one "a" per clip, one per consecutive window."""
  model = stalign.load(tiny_run)
  params = jax.tree.map(np.array, model.params)
  params["ctc_head"]["bias"].value[:] = 0.0
  params["ctc_head"]["kernel"].value[:] = 0.0
  params["ctc_head"]["bias"].value[text.encode("a")[0] :: text.VOCAB_SIZE] = 10.0
  model.params = params
  clip = fsdd_files("george", range(0, 1))[0]
  long = np.concatenate(
    [sf.read(f, dtype="float32")[0] for f in fsdd_files("george", range(20))] * 3
  )
  long = long[: 40 * 8000]
  path = str(tmp_path / "long.wav")
  sf.write(path, long, 8000)
  short, windows = model.transcribe([clip, path])
  assert short == "a"
  assert windows == " ".join(["a"] * math.ceil(40 / model.config.features.max_seconds))


def test_fused_speech_adds_the_teachers_embedding_of_what_the_head_heard(tiny_run, tmp_path):
  """`model.transcript_weight`: unit(unit(student) + w * unit(teacher(transcript))), the transcript
  being the CTC head's own; a head that hears nothing leaves the student's embedding alone."""
  clips = fsdd_files("george", range(1))[:2]
  alone = stalign.load(tiny_run)
  config = alone.config.copy_and_resolve_references()
  config.model.transcript_weight = 0.5
  fused = stalign.load(tiny_run, config=config)
  params = jax.tree.map(np.array, alone.params)
  params["ctc_head"]["kernel"].value[:] = 0.0
  params["ctc_head"]["bias"].value[:] = 0.0
  params["ctc_head"]["bias"].value[text.encode("a")[0] :: text.VOCAB_SIZE] = 10.0
  alone.params = fused.params = params
  student = alone.encode_speech(clips)
  assert fused.transcribe(clips) == ["a", "a"]
  heard = alone.encode_text(["a", "a"])
  expected = utils.unit(utils.unit(student) + 0.5 * utils.unit(heard))
  np.testing.assert_allclose(fused.encode_speech(clips), expected, atol=1e-5)
  # The same fusion behind every speech embedding: the teacher space maps the fused vector back.
  np.testing.assert_allclose(
    fused.encode_speech(clips, space="teacher"), fused.to_teacher_space(expected), atol=1e-5
  )
  # Evaluation's one pass gives the same embeddings and transcripts.
  feats = [fused.features(fused.load_waveform(c)) for c in clips]
  together, layers, heard_texts = fused.embed_and_transcribe_features(feats)
  np.testing.assert_allclose(together, fused.embed_features(feats)[0], atol=1e-6)
  assert heard_texts == fused.transcribe_features(feats) == ["a", "a"] and layers.shape[1] == 2
  params["ctc_head"]["bias"].value[:] = 0.0
  params["ctc_head"]["bias"].value[0 :: text.VOCAB_SIZE] = 10.0  # Blank on every frame.
  alone.params = fused.params = params
  assert fused.transcribe(clips) == ["", ""]
  np.testing.assert_allclose(fused.encode_speech(clips), utils.unit(student), atol=1e-5)


def test_transcribing_with_a_run_trained_without_ctc_names_the_fix(tiny_run, prepared_config):
  config = prepared_config.copy_and_resolve_references()
  config.loss.ctc_weight = 0.0
  with pytest.raises(ValueError, match="loss.ctc_weight=0.*untrained"):
    stalign.load(tiny_run, config=config).transcribe([np.zeros(16000, np.float32) + 0.1])


@pytest.fixture(scope="module")
def bucketed_model(tiny_run, prepared_config):
  """The tiny run padding to several buckets (its checkpoint does not depend on them)."""
  return stalign.load(tiny_run, config=with_buckets(prepared_config))


def test_batches_and_buckets_do_not_change_embeddings(bucketed_model, prepared_config, monkeypatch):
  """Padding is masked: a clip embeds the same alone in its own bucket and in a longer batch's."""
  model = bucketed_model
  padded = []  # Padded length of every batch the model runs.
  forward = model._forward

  def recording(params, x, num_frames, ctc):
    padded.append(x.shape[1])
    return forward(params, x, num_frames, ctc=ctc)

  monkeypatch.setattr(model, "_forward", recording)
  rng = np.random.default_rng(0)
  feats = [
    rng.standard_normal((n, prepared_config.features.num_mels)).astype(np.float16)
    for n in (40, 151, 12, 90, 33, 140, 7, 100, 60, 20)
  ]
  together, together_layers = model.embed_features(feats)
  shared = padded.copy()
  padded.clear()
  alone = [model.embed_features([f]) for f in feats[:3]]
  buckets = features.bucket_lengths(model.config)
  assert padded == [
    features.padded_length(len(f), buckets, model.config.model.subsample) for f in feats[:3]
  ]
  assert set(padded) - set(shared), f"alone {padded}, together {shared}: no clip changed bucket"
  np.testing.assert_allclose(together[:3], np.concatenate([e for e, _ in alone]), atol=1e-5)
  np.testing.assert_allclose(
    together_layers[:, :3], np.concatenate([h for _, h in alone], axis=1), atol=1e-5
  )


def _test_clips(prepared_config, n: int) -> list[str]:
  with open(prepared_config.data.manifests.test) as f:
    return [json.loads(line)["audio_filepath"] for line in f][:n]


def test_encode_takes_sentence_transformers_keywords(model, prepared_config, capsys):
  paths = _test_clips(prepared_config, 5)
  plain = model.encode_speech(paths)
  assert isinstance(plain, np.ndarray) and plain.shape == (5, 384)
  out = model.encode_speech(paths, batch_size=2, normalize_embeddings=True, convert_to_numpy=False)
  assert isinstance(out, jax.Array)
  np.testing.assert_allclose(np.asarray(out), utils.unit(plain), atol=1e-5)
  np.testing.assert_allclose(model.encode_speech(paths[2]), plain[2], atol=1e-6)  # One in, one out.
  texts = ["one", "turn on the lights", "three"]
  text = model.encode_text(texts)
  unit = model.encode_text(texts, batch_size=1, normalize_embeddings=True)
  np.testing.assert_allclose(unit, utils.unit(text), atol=1e-5)
  np.testing.assert_allclose(model.encode_text("three"), text[2], atol=1e-6)
  assert model.encode_text([]).shape == (0, 384)
  want = (plain / np.linalg.norm(plain, axis=1, keepdims=True)) @ (
    text / np.linalg.norm(text, axis=1, keepdims=True)
  ).T
  np.testing.assert_allclose(model.similarity(plain, text), want, atol=1e-6)
  assert isinstance(model.similarity(jax.numpy.asarray(plain), text), jax.Array)
  # The progress bar: on when asked; by default only when logging is at INFO.
  capsys.readouterr()
  model.encode_speech(paths, show_progress_bar=True)
  assert "encode clip" in capsys.readouterr().err
  verbosity = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.WARNING)
    model.encode_text(texts)
    assert capsys.readouterr().err == ""
    absl_logging.set_verbosity(absl_logging.INFO)
    model.encode_text(texts)
    assert "encode text" in capsys.readouterr().err
  finally:
    absl_logging.set_verbosity(verbosity)


def test_stream_speech_reads_a_pool_of_batches_ahead_and_keeps_the_input_order(
  model, prepared_config, monkeypatch
):
  paths = _test_clips(prepared_config, 10)
  windows = [model.windows(model.load_waveform(p)) for p in paths]
  assert [len(w) for w in windows] == [1] * 10  # Clips under features.max_seconds.
  monkeypatch.setattr(api, "STREAM_BATCHES", 2)
  read, rows = [], []  # Inputs taken from the generator; forward-pass batch sizes.

  def inputs():
    for p in paths:
      read.append(p)
      yield p

  forward = model._forward
  monkeypatch.setattr(
    model,
    "_forward",
    lambda params, x, n, ctc: rows.append(x.shape[0]) or forward(params, x, n, ctc=ctc),
  )
  got = [(len(read), emb) for emb in model.stream_speech(inputs(), batch_size=2)]
  # Pools of two batches of two: nothing is read beyond the pool being embedded.
  assert [n for n, _ in got] == [4] * 4 + [8] * 4 + [10] * 2 and set(rows) == {2}
  want = model.embed_features([w for item in windows for w in item])[0]
  np.testing.assert_allclose(np.stack([e for _, e in got]), want, atol=1e-5)


def test_a_relative_data_dir_is_found_above_the_run_from_any_directory(
  prepared_config, tiny_run, tmp_path, monkeypatch
):
  root = tmp_path / "project"
  (root / "runs").mkdir(parents=True)
  os.symlink(prepared_config.data_dir, root / "data")
  run = root / "runs" / "r"
  shutil.copytree(tiny_run, run)
  config = json.loads((run / "config.json").read_text())
  monkeypatch.chdir(tmp_path)  # Not where training ran: "data" is not here.
  for data_dir in ("data", "gone"):
    (run / "config.json").write_text(json.dumps({**config, "data_dir": data_dir}))
    if data_dir == "data":
      assert stalign.load(str(run)).config.data_dir == str(root / "data")
  with pytest.raises(FileNotFoundError) as e:
    stalign.load(str(run))
  message = str(e.value)
  assert "data_dir='gone'" in message and str(root / "gone") in message
  assert "pass config= with data_dir" in message and "stalign.export" in message


def test_a_namesake_data_folder_built_with_other_settings_is_passed_over(
  prepared_config, tiny_run, tmp_path, monkeypatch
):
  """Evaluating a run from another directory: a "data" folder there, built for another front
  end, is not the run's; the one beside the run is found, or the error names the difference."""
  root = tmp_path / "project"
  (root / "runs").mkdir(parents=True)
  run = root / "runs" / "r"
  shutil.copytree(tiny_run, run)
  config = json.loads((run / "config.json").read_text())
  (run / "config.json").write_text(json.dumps({**config, "data_dir": "data"}))
  namesake = tmp_path / "data"
  (namesake / "tfrecords").mkdir(parents=True)
  shutil.copy(
    layout.teacher_stats_path(prepared_config.data_dir), layout.teacher_stats_path(str(namesake))
  )
  summary = layout.read_summary(prepared_config.data_dir, "train")
  summary["num_mels"] = 128
  with open(layout.summary_path(str(namesake), "train"), "w") as f:
    json.dump(summary, f)
  monkeypatch.chdir(tmp_path)  # "data" here is the namesake.
  with pytest.raises(FileNotFoundError, match="features.num_mels=128 but the config asks for"):
    stalign.load(str(run))
  os.symlink(prepared_config.data_dir, root / "data")
  assert stalign.load(str(run)).config.data_dir == str(root / "data")


def test_a_folder_without_config_json_or_no_folder_names_what_to_pass(tmp_path):
  (tmp_path / "run" / "checkpoints").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="run/config.json not found: pass a run directory"):
    stalign.load(str(tmp_path / "run"))
  with pytest.raises(FileNotFoundError, match="missing is not a folder: pass a run directory"):
    stalign.load(str(tmp_path / "missing"))


def _cli(module, *args, returncode=0, env=None):
  out = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=env and {**os.environ, **env},
  )
  assert out.returncode == returncode, out.stderr[-3000:]
  return out


def test_embed_cli_on_two_devices_writes_npy_with_index_and_parquet_skipping_bad_files(
  tiny_run, model, prepared_config, tmp_path
):
  clips = tmp_path / "clips"
  clips.mkdir()
  paths = [json.loads(line)["audio_filepath"] for line in open(prepared_config.data.manifests.test)]
  for i, path in enumerate(paths[:3]):
    os.symlink(path, clips / f"c{i}.wav")
  (clips / "broken.wav").write_bytes(b"not audio")
  (clips / "._c0.wav").write_bytes(b"macOS metadata")  # Hidden: not an input.
  out = _cli(
    "stalign.embed",
    f"--workdir={tiny_run}",
    f"--input={clips}",
    f"--output={tmp_path / 'e.npy'}",
    "--verbosity=0",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
  )
  assert "1 skipped" in out.stdout and "broken.wav" in out.stderr  # Listed as it happens.
  assert "split over 2 local devices" in out.stderr
  emb = np.load(tmp_path / "e.npy")
  index = json.load(open(tmp_path / "e.json"))
  assert emb.shape == (3, index["dim"])
  assert [r["id"] for r in index["rows"]] == ["c0.wav", "c1.wav", "c2.wav"]
  assert index["skipped"][0]["path"].endswith("broken.wav")
  assert "cannot decode" in index["skipped"][0]["reason"]
  # Batches split over two devices embed as one device does.
  np.testing.assert_allclose(emb, model.encode_speech(paths[:3]), atol=1e-5)
  pq = pytest.importorskip("pyarrow.parquet")
  _cli(
    "stalign.embed",
    f"--workdir={tiny_run}",
    f"--input={prepared_config.data.manifests.valid}",
    f"--output={tmp_path / 'e.parquet'}",
  )
  table = pq.read_table(tmp_path / "e.parquet").to_pydict()
  assert len(table["embedding"]) == 10 and table["text"][3] == "three"


def test_search_cli_prints_sentences_best_first(tiny_run, model, prepared_config, tmp_path):
  query = json.loads(open(prepared_config.data.manifests.test).readline())["audio_filepath"]
  (tmp_path / "t.txt").write_text("one\n\ntwo\nthree\n")
  out = _cli(
    "stalign.search",
    f"--workdir={tiny_run}",
    f"--query={query}",
    f"--texts={tmp_path / 't.txt'}",
    "--top_k=2",
  )
  assert out.stderr.strip() == "", out.stderr  # Quiet by default: only the answer lines.
  # Each sentence with its own score, recomputed here: a label paired with another's score fails.
  texts = ["one", "two", "three"]
  scores = model.similarity(model.encode_speech(query), model.encode_text(texts))
  best = np.argsort(-scores)[:2]
  assert out.stdout.splitlines() == [f"{scores[i]:+.3f}  {texts[i]}" for i in best]


@pytest.mark.parametrize("flag", ["query", "texts", "workdir"])
def test_search_cli_user_errors_are_one_line_without_traceback(
  tiny_run, prepared_config, tmp_path, flag
):
  args = {
    "workdir": tiny_run,
    "query": json.loads(open(prepared_config.data.manifests.test).readline())["audio_filepath"],
    "texts": str(tmp_path / "t.txt"),
  }
  (tmp_path / "t.txt").write_text("one\n")
  args[flag] = str(tmp_path / "missing")
  out = _cli("stalign.search", *(f"--{k}={v}" for k, v in args.items()), returncode=2)
  assert out.stdout == ""
  [line] = out.stderr.strip().splitlines()
  assert line.startswith("error: ") and "missing" in line and "Traceback" not in out.stderr
