# `make test` and `make demo` work on a fresh machine: they create .venv, install the pinned CPU torch
# from constraints.txt (never an unpinned torch, which would pull a multi-GB CUDA build), then the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: test test-fast demo bench lint clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[test]"
	touch $@

$(VENV)/.examples: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[examples]"
	touch $@

$(VENV)/.bench: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[bench]"
	touch $@

test: $(VENV)/.test
	$(PY) -m pytest -q

# everything but the tests marked slow (several processes, real data): a quick check while editing
test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow"

demo: $(VENV)/.examples
	$(PY) -m examples.mnist

# Side-by-side timings (raw loop, Trainer, Trainer + standard callbacks, Lightning) and import time; see
# benchmarks/README.md. BENCH_ARGS=--quick for a smoke run.
bench: $(VENV)/.bench
	$(PY) -m benchmarks.compare $(BENCH_ARGS)

lint: $(VENV)/.test
	$(PY) -m mypy torchsystem_trainer
	$(PY) -m ruff check torchsystem_trainer

clean:
	rm -rf $(VENV) runs .pytest_cache
