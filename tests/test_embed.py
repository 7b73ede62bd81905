"""Embedding at scale and searching a prebuilt index: resumable chunks, both modalities, spaces."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import stalign
from stalign import chunks
from stalign import embed
from stalign import search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clips(prepared_config, tmp_path):
  """A manifest of 7 clips (one without text) and, as its fifth line, a line that is not JSON."""
  lines = open(prepared_config.data.manifests.test).readlines()[:7]
  rows = [json.loads(line) for line in lines]
  del rows[2]["text"]
  path = tmp_path / "clips.jsonl"
  path.write_text(
    "".join(json.dumps(r) + "\n" for r in rows[:4])
    + "{oops\n"
    + "".join(json.dumps(r) + "\n" for r in rows[4:])
  )
  return str(path)


class _Killed(Exception):
  """Stands in for the process dying while it embeds a chunk."""


def test_killed_run_resumes_and_embeds_and_writes_each_input_exactly_once(
  model, tiny_run, clips, tmp_path, monkeypatch
):
  whole = str(tmp_path / "whole.npy")
  embed.run(model, tiny_run, clips, whole, chunk_size=2)
  embedded = []  # Input ids handed to the model, over both attempts.
  real = embed.embed_chunk

  def dies_on_third_chunk(model, modality, space, items):
    if len(embedded) == 2:
      raise _Killed
    embedded.append([it["id"] for it in items])
    return real(model, modality, space, items)

  monkeypatch.setattr(embed, "embed_chunk", dies_on_third_chunk)
  output = str(tmp_path / "out.npy")
  with pytest.raises(_Killed):
    embed.run(model, tiny_run, clips, output, chunk_size=2)
  parts = output + ".parts"
  saved = sorted(os.listdir(parts))
  assert [name[:12] for name in saved] == ["chunk-000000", "chunk-000001", "state.json"], saved
  assert not os.path.exists(output)
  third = chunks.Cache(parts, embed.list_inputs(clips, "speech")[0], 2).path(2)
  with open(third + ".tmp", "wb") as f:  # What a kill while saving it leaves.
    f.write(b"half written")
  with pytest.raises(FileExistsError, match="other inputs or flags"):
    embed.run(model, tiny_run, clips, output, chunk_size=3)  # Not the run that was started.

  embedded.append("restart")
  monkeypatch.setattr(
    embed, "embed_chunk", lambda *a: embedded.append([i["id"] for i in a[3]]) or real(*a)
  )
  files, rows, skipped = embed.run(model, tiny_run, clips, output, chunk_size=2)
  assert files == [output, str(tmp_path / "out.json")] and (rows, skipped) == (7, 1)
  first, second = embedded[: embedded.index("restart")], embedded[embedded.index("restart") + 1 :]
  ids = [i for chunk in first + second for i in chunk]
  assert len(first) == 2 and len(second) == 2  # After the restart, only the chunks not saved.
  assert len(ids) == len(set(ids)) == 7
  index = json.load(open(str(tmp_path / "out.json")))
  assert [r["id"] for r in index["rows"]] == ids
  np.testing.assert_array_equal(np.load(output), np.load(whole))
  assert [s["reason"] for s in index["skipped"]] == [
    s["reason"] for s in json.load(open(str(tmp_path / "whole.json")))["skipped"]
  ]
  assert "clips.jsonl:5" in index["skipped"][0]["reason"]  # The line that is not JSON.
  assert "text" not in index["rows"][2] and index["rows"][3]["text"]
  assert not os.path.exists(parts)


def test_text_modality_in_both_spaces_to_parquet(model, tiny_run, tmp_path):
  pq = pytest.importorskip("pyarrow.parquet")
  (tmp_path / "t.txt").write_text("one\n\nturn on the lights\n  \nthree\n")
  for space in ("shared", "teacher"):
    output = str(tmp_path / f"{space}.parquet")
    files, rows, skipped = embed.run(
      model, tiny_run, str(tmp_path / "t.txt"), output, "text", space, chunk_size=2
    )
    assert files == [output, output + ".skipped.json"] and (rows, skipped) == (3, 0)
    vectors, got_rows, info = embed.read_embeddings(output)
    texts = ["one", "turn on the lights", "three"]
    assert [r["text"] for r in got_rows] == texts
    assert [r["id"] for r in got_rows] == ["t.txt:1", "t.txt:3", "t.txt:5"]
    assert info["space"] == space and info["modality"] == "text" and info["dim"] == 384
    np.testing.assert_allclose(vectors, model.encode_text(texts, space), atol=1e-6)
  schema = pq.read_schema(str(tmp_path / "teacher.parquet"))
  assert schema.field("embedding").type.list_size == 384


def test_index_written_by_other_code_needs_its_space(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  vectors = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
  path = str(tmp_path / "st.parquet")  # As user code would save sentence-transformers vectors.
  pq.write_table(pa.table({"text": ["a", "b", "c"], "embedding": list(vectors)}), path)
  got, rows, info = embed.read_embeddings(path)
  np.testing.assert_array_equal(got, vectors)
  assert rows == [{"text": "a"}, {"text": "b"}, {"text": "c"}] and info == {}
  with pytest.raises(Exception, match="--space=teacher"):
    search._index_space(info, None, path)
  assert search._index_space(info, "teacher", path) == "teacher"
  with pytest.raises(Exception, match="holds shared-space vectors"):
    search._index_space({"space": "shared"}, "teacher", path)


def test_top_k_is_best_first_over_blocks(monkeypatch):
  monkeypatch.setattr(search, "BLOCK", 3)
  index = np.eye(8, dtype=np.float32)[[3, 1, 7, 0, 5, 2, 6, 4]] * 5.0
  query = np.arange(8, dtype=np.float32)
  got = search.top_k(query, index, 3)
  assert [row for _, row in got] == [2, 6, 4]  # Rows holding axes 7, 6, 5.
  np.testing.assert_allclose([s for s, _ in got], np.array([7, 6, 5]) / np.linalg.norm(query))
  assert len(search.top_k(query, index, 50)) == 8


def test_search_cli_with_a_prebuilt_index(model, tiny_run, prepared_config, tmp_path):
  (tmp_path / "t.txt").write_text("one\ntwo\nthree\nfour\n")
  index = str(tmp_path / "index.parquet")
  embed.run(model, tiny_run, str(tmp_path / "t.txt"), index, "text", "teacher")
  query = json.loads(open(prepared_config.data.manifests.test).readline())["audio_filepath"]
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "stalign.search",
      f"--workdir={tiny_run}",
      f"--query={query}",
      f"--index={index}",
      "--top_k=3",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0 and out.stderr.strip() == "", out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  scores = stalign.api.cosine(
    model.encode_speech([query], space="teacher"),
    model.encode_text(["one", "two", "three", "four"], "teacher"),
  )[0]
  best = np.argsort(-scores)[:3]
  assert lines == [f"{scores[i]:+.3f}  {['one', 'two', 'three', 'four'][i]}" for i in best]
