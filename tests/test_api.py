"""The embedding API and its CLIs, on an untrained tiny student (what is checked is plumbing)."""

import json
import os
import subprocess
import sys

from flax import nnx
import jax
import ml_collections
import numpy as np
import pytest
import soundfile as sf

import stalign
from stalign import checkpoints
from stalign.data import features
from stalign.data import layout
from stalign.data import tfrecords
from stalign.models import student as student_lib

from testdata import with_buckets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """A run folder (config.json + a step-7 checkpoint of freshly initialised params), no training."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  dim, _ = layout.read_teacher_stats(config.data_dir)
  params = nnx.state(student_lib.build(config, dim, seed=1))
  mgr = checkpoints.manager(workdir, keep=1, async_save=False)
  checkpoints.save(mgr, 7, {"params": params}, {"epoch": 0, "batch": 0})
  mgr.wait_until_finished()
  mgr.close()
  return workdir


@pytest.fixture(scope="module")
def tiny_run(prepared_config, tmp_path_factory):
  return make_run(prepared_config, str(tmp_path_factory.mktemp("run") / "run"))


@pytest.fixture(scope="module")
def model(tiny_run):
  return stalign.load(tiny_run)


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
  from_file, from_wave = model.embed_speech([path, wave], sample_rate=rate)
  np.testing.assert_allclose(from_file, from_wave, atol=1e-6)
  # The same front end as the TFRecord writer: identical frames, so identical embeddings.
  stored = next(
    r
    for r in tfrecords.iterate_records(layout.list_shards(prepared_config.data_dir, "test"))
    if r["id"] == "test.jsonl:1"
  )
  np.testing.assert_array_equal(model.features(model.load_waveform(path)), stored["features"])
  np.testing.assert_allclose(model.embed_features([stored["features"]])[0][0], from_file, atol=1e-5)


def test_text_is_centred_like_the_training_targets(model):
  raw = model.teacher.embed(["one", "two"])
  np.testing.assert_allclose(model.embed_text(["one", "two"]), raw - model.target_mean, atol=1e-6)
  assert np.abs(model.target_mean).sum() > 0


@pytest.fixture(scope="module")
def bucketed_model(tiny_run, prepared_config):
  """The tiny run padding to several buckets (its checkpoint does not depend on them)."""
  return stalign.load(tiny_run, config=with_buckets(prepared_config))


def test_batches_and_buckets_do_not_change_embeddings(bucketed_model, prepared_config, monkeypatch):
  """Padding is masked: a clip embeds the same alone in its own bucket and in a longer batch's."""
  model = bucketed_model
  padded = []  # Padded length of every batch the model runs.
  forward = model._forward

  def recording(params, x, num_frames):
    padded.append(x.shape[1])
    return forward(params, x, num_frames)

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


def _cli(module, *args, returncode=0):
  out = subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == returncode, out.stderr[-3000:]
  return out


def test_embed_cli_writes_npy_with_index_and_parquet_skipping_bad_files(
  tiny_run, prepared_config, tmp_path
):
  clips = tmp_path / "clips"
  clips.mkdir()
  for i, line in enumerate(open(prepared_config.data.manifests.test).readlines()[:3]):
    os.symlink(json.loads(line)["audio_filepath"], clips / f"c{i}.wav")
  (clips / "broken.wav").write_bytes(b"not audio")
  _cli(
    "stalign.embed", f"--workdir={tiny_run}", f"--input={clips}", f"--output={tmp_path / 'e.npy'}"
  )
  emb = np.load(tmp_path / "e.npy")
  index = json.load(open(tmp_path / "e.json"))
  assert emb.shape == (3, index["dim"])
  assert [r["id"] for r in index["rows"]] == ["c0.wav", "c1.wav", "c2.wav"]
  assert index["skipped"][0]["path"].endswith("broken.wav")
  pq = pytest.importorskip("pyarrow.parquet")
  _cli(
    "stalign.embed",
    f"--workdir={tiny_run}",
    f"--input={prepared_config.data.manifests.valid}",
    f"--output={tmp_path / 'e.parquet'}",
  )
  table = pq.read_table(tmp_path / "e.parquet").to_pydict()
  assert len(table["embedding"]) == 10 and table["text"][3] == "three"


def test_search_cli_prints_sentences_best_first(tiny_run, prepared_config, tmp_path):
  query = json.loads(open(prepared_config.data.manifests.test).readline())["audio_filepath"]
  (tmp_path / "t.txt").write_text("one\n\ntwo\nthree\n")
  out = _cli(
    "stalign.search",
    f"--workdir={tiny_run}",
    f"--query={query}",
    f"--texts={tmp_path / 't.txt'}",
    "--top_k=2",
  )
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2
  scores = [float(line.split()[0]) for line in lines]
  assert scores == sorted(scores, reverse=True)
  assert out.stderr.strip() == "", out.stderr  # Quiet by default: only the answer lines.


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
