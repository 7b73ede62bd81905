"""What a user installing or citing the package reads: its version, licence and citation."""

import os
import runpy
import subprocess

import pytest
import setuptools
import yaml

import stalign
from stalign import model_card

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_installs_the_version_the_package_reports(monkeypatch):
  got = {}
  monkeypatch.setattr(setuptools, "setup", got.update)
  runpy.run_path(os.path.join(REPO, "setup.py"))
  assert got["version"] == stalign.__version__
  assert all(part.isdigit() for part in stalign.__version__.split("."))


def test_licence_and_citation_name_what_the_model_card_does():
  with open(os.path.join(REPO, "LICENSE")) as f:
    assert "Apache License\n                           Version 2.0" in f.read()
  assert model_card.LICENSE == "apache-2.0"  # The card's `license`, the same licence.
  with open(os.path.join(REPO, "CITATION.cff")) as f:
    cff = yaml.safe_load(f)
  assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
  assert {"message", "title", "authors", "type"} <= set(cff)
  [paper] = cff["references"]
  assert paper["title"] == "An Analysis of Semantically-Aligned Speech-Text Embeddings"
  assert [a["family-names"] for a in paper["authors"]] == ["Huzaifah", "Kukanov"]
  assert paper["year"] == 2022 and "SLT" in paper["collection-title"]
  assert paper["title"] in model_card.CITATION and "Huzaifah, Muhammad" in model_card.CITATION


@pytest.mark.parametrize("status", [5, 2])
def test_ci_fails_when_the_suite_collects_nothing_or_fails(tmp_path, status):
  """`.ci/run` passes `make test`'s exit status on, pytest's 5 ("no tests collected") included."""
  fake = tmp_path / "make"
  fake.write_text(f"#!/bin/sh\nexit {status}\n")
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
  out = subprocess.run([os.path.join(REPO, ".ci", "run")], env=env, capture_output=True)
  assert out.returncode == status
