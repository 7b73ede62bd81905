"""One run's stages as `main` and `study` run them: config saved first, then the stages in order."""

import json
import os

import pytest

from stalign import evaluate
from stalign import prepare
from stalign import stages
from stalign import train

import testdata


def test_stages_run_in_order_after_the_config_is_saved(tmp_path, monkeypatch):
  config = testdata.tiny_config(str(tmp_path / "data"))
  workdir, ran = str(tmp_path / "run"), []

  def stage(name):
    def run(*args):
      assert os.path.exists(os.path.join(workdir, "config.json"))  # Saved before any stage.
      ran.append(name)
      return name + " result"

    return run

  monkeypatch.setattr(prepare, "prepare", stage("data"))
  monkeypatch.setattr(train, "train_and_evaluate", stage("train"))
  monkeypatch.setattr(evaluate, "evaluate", stage("evaluate"))
  seen = []
  results = stages.run_stages(
    config, workdir, ["evaluate", "data"], lambda s, result: seen.append((s, result, list(ran)))
  )
  assert ran == ["data", "evaluate"] and results == {
    "data": "data result",
    "evaluate": "evaluate result",
  }
  assert seen == [("data", "data result", ["data"]), ("evaluate", "evaluate result", ran)]
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved == json.loads(config.to_json_best_effort())
  with pytest.raises(ValueError, match=r"unknown stages \['trian'\]"):
    stages.run_stages(config, workdir, ["trian"])
