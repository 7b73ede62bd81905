"""Search both ways (a recording for texts, typed text for recordings) and its user errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import stalign
from stalign import cli
from stalign import embed
from stalign import search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clips(prepared_config) -> tuple[list[str], list[str]]:
  """The test split's first ten clips (nicolas saying zero to nine) and their transcripts."""
  with open(prepared_config.data.manifests.test) as f:
    rows = [json.loads(line) for line in f][:10]
  assert sorted(r["text"] for r in rows) == sorted(set(r["text"] for r in rows))
  return [r["audio_filepath"] for r in rows], [r["text"] for r in rows]


@pytest.fixture(scope="module")
def fitted(tiny_run, clips):
  """The tiny run with its output layer solved to put each clip on its transcript's embedding.

  An untrained student's answers are arbitrary. Its last layer is linear, so least squares on
  that layer's input (read by making the layer the identity) places the ten clips where a
  perfectly trained student would: what search must return is then known.
  """
  paths, words = clips
  model = stalign.load(tiny_run)
  params = jax.tree.map(np.array, model.params)
  kernel, bias = params["pool_out"]["kernel"].value, params["pool_out"]["bias"].value
  kernel[:], bias[:] = np.eye(*kernel.shape), 0.0
  model.params = params
  hidden = model.encode_speech(paths)[:, : kernel.shape[0]]
  targets = model.encode_text(words)
  solved = np.linalg.lstsq(np.c_[hidden, np.ones(len(paths))], targets, rcond=None)[0]
  kernel[:], bias[:] = solved[:-1], solved[-1]
  model.params = params
  np.testing.assert_allclose(model.encode_speech(paths), targets, atol=1e-3)
  return model


@pytest.fixture(scope="module")
def speech_index(fitted, tiny_run, prepared_config, tmp_path_factory) -> str:
  """The fitted model's embeddings of the clips (manifest rows with their transcripts)."""
  manifest = tmp_path_factory.mktemp("index") / "clips.jsonl"
  with open(prepared_config.data.manifests.test) as f:
    manifest.write_text("".join(f.readlines()[:10]))
  index = str(manifest.parent / "speech.parquet")
  embed.run(fitted, tiny_run, str(manifest), index)
  return index


def test_text_finds_the_recording_of_that_sentence_first_and_the_recording_its_text(
  fitted, clips, speech_index, tmp_path
):
  paths, words = clips
  recordings = search.read_index(speech_index, None)
  assert recordings.space == "shared" and len(recordings.labels) == 10
  for path, word in zip(paths, words):
    found = search.search(fitted, recordings, text=word, k=3)
    assert found[0][1] == path, (word, found)  # The path, not the transcript the row also holds.
    assert found[0][0] > 0.99 > found[1][0]
  (tmp_path / "t.txt").write_text("\n".join(words) + "\n")
  sentences = search.read_texts(str(tmp_path / "t.txt"), None)
  for path, word in zip(paths, words):
    assert search.search(fitted, sentences, query=path, k=1)[0][1] == word


def test_classify_is_the_argmax_of_similarity_with_the_templated_labels(fitted, clips):
  paths, words = clips
  labels = sorted(words)  # Not in the clips' order.
  for template in ("{}", "the speaker says {}"):
    got = fitted.classify(paths, labels, template)
    texts = [template.format(label) for label in labels]
    scores = fitted.similarity(fitted.encode_speech(paths), fitted.encode_text(texts))
    assert got == [labels[i] for i in np.argmax(scores, axis=1)], template
  assert fitted.classify(paths, labels) == words  # Where the head was solved to put them.
  assert fitted.classify(paths[3], labels) == words[3]  # One input, one label.
  # Several templates: the class embedding of the zero-shot evaluation (prompt-averaged).
  assert fitted.classify(paths, labels, ("{}", "the speaker says {}")) == words


def test_text_search_cli_prints_each_recording_with_its_own_score(
  model, tiny_run, speech_index, clips
):
  """Typed text is embedded by the teacher alone, so the plain run finds the fitted run's clips."""
  out = subprocess.run(
    [sys.executable, "-m", "stalign.search", f"--workdir={tiny_run}", "--text=seven"]
    + [f"--index={speech_index}", "--top_k=4"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0 and out.stderr == "", out.stderr[-3000:]
  paths, words = clips
  vectors, rows, _ = embed.read_embeddings(speech_index)
  assert [r["path"] for r in rows] == paths
  scores = model.similarity(model.encode_text(["seven"]), vectors)[0]
  best = np.argsort(-scores)[:4]
  assert out.stdout.splitlines() == [f"{scores[i]:+.3f}  {paths[i]}" for i in best]
  assert best[0] == words.index("seven")


def _user_error(call, *args) -> str:
  """The message of the user error `call(*args)` raises, after checking the CLI prints it alone."""
  with pytest.raises(cli.USER_ERRORS) as e:
    call(*args)
  assert "\n" not in str(e.value), str(e.value)
  return str(e.value)


def test_flags_that_do_not_go_together_are_named_with_the_fix(tmp_path):
  query = str(tmp_path / "q.wav")
  open(query, "wb").close()
  for args, needles in [
    ((query, "fan", "t.txt", None), ["--query=", "--text='fan'", "both given", "one of --query"]),
    ((None, None, "t.txt", None), ["no query given", "--query (an audio file)"]),
    ((query, None, "t.txt", "i.parquet"), ["--texts=t.txt and --index=i.parquet", "one of"]),
    ((query, None, None, None), ["no candidates given", "--index (embeddings"]),
    ((None, "fan", "t.txt", None), ["--texts=t.txt holds sentences", "stalign.embed --input"]),
    ((str(tmp_path / "nope.wav"), None, "t.txt", None), ["nope.wav is not a file", "audio file"]),
  ]:
    message = _user_error(search.check_flags, *args)
    assert all(n in message for n in needles), (needles, message)


def test_candidate_files_that_cannot_be_used_are_named_with_the_fix(model, tmp_path):
  empty, latin1, bom = tmp_path / "empty.txt", tmp_path / "latin1.txt", tmp_path / "bom.txt"
  empty.write_text("\n  \n")
  latin1.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
  bom.write_bytes("\ufeffcaf\u00e9\n".encode())
  message = _user_error(search.read_texts, str(empty), None)
  assert "--texts=" in message and "no sentences" in message and "one candidate per line" in message
  message = _user_error(search.read_texts, str(latin1), None)
  assert "latin1.txt is not UTF-8" in message and "0xe9 at offset 3" in message
  assert "save it as UTF-8" in message
  assert search.read_texts(str(bom), None).labels == ["caf\u00e9"]  # A BOM is no text.

  np.save(tmp_path / "none.npy", np.zeros((0, 384), np.float32))
  message = _user_error(search.read_index, str(tmp_path / "none.npy"), "shared")
  assert "none.npy holds no embeddings" in message and "python -m stalign.embed" in message
  np.save(tmp_path / "narrow.npy", np.ones((3, 4), np.float32))
  narrow = search.read_index(str(tmp_path / "narrow.npy"), "shared")
  message = _user_error(search.search, model, narrow, None, "fan")
  assert "narrow.npy holds 4-d vectors" in message and "embeds 384-d" in message
  assert "write the index with this model" in message
