"""Shared test setup: CPU-only JAX, and a tiny prepared dataset of real FSDD speech.

The dataset goes through the user-manifest source, so the code path real
datasets take (manifest -> TFRecords -> teacher embeddings) is what the tests
train and evaluate on. Helpers that tests import live in `testdata.py`.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Tiny models still take seconds to compile on 2 cores; tests that train share compiled steps.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/stalign-test-jax-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

from testdata import fsdd_files  # noqa: E402
from testdata import make_run  # noqa: E402
from testdata import tiny_config  # noqa: E402
from testdata import write_manifest  # noqa: E402


@pytest.fixture(scope="session")
def prepared_config(tmp_path_factory):
  """Tiny config whose data (train/valid/test TFRecords + teacher embeddings) is built once."""
  from stalign import prepare

  root = str(tmp_path_factory.mktemp("fsdd_tiny"))
  config = tiny_config(os.path.join(root, "data"))
  splits = {
    "train": fsdd_files("jackson", range(0, 4)) + fsdd_files("george", range(0, 2)),
    "valid": fsdd_files("lucas", range(0, 1)),
    "test": fsdd_files("nicolas", range(0, 2)),
  }
  for split, files in splits.items():
    config.data.manifests[split] = write_manifest(os.path.join(root, f"{split}.jsonl"), files)
  prepare.prepare(config)
  return config


@pytest.fixture(scope="module")
def tiny_run(prepared_config, tmp_path_factory):
  """An untrained run folder of the tiny config (see `testdata.make_run`)."""
  return make_run(prepared_config, str(tmp_path_factory.mktemp("run") / "run"))


@pytest.fixture(scope="module")
def model(tiny_run):
  import stalign

  return stalign.load(tiny_run)
