# Each target sets up its own virtual environment, so `make demo` and
# `make test` work on a fresh machine with only python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-fast docs bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# constraints.txt pins a resolved set: without it pip's resolver can spend
# many minutes backtracking between botocore (moto) and aiobotocore (s3fs).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/digits/pipeline.py
	$(BIN)/python examples/digits/pipeline.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

docs: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[docs]"
	$(BIN)/mkdocs build --strict

# Peers (prefect, redun, flytekit) go into their own venv so that their
# dependencies never change the project venv. BENCH_ARGS is passed to the
# script, e.g. `make bench BENCH_ARGS="--systems pipedsl,dask --repeat 1"`.
BENCH_VENV ?= .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed-bench
BENCH_ARGS ?= --write-docs docs/benchmarks.md
FINGERPRINT_ARGS ?= --write-docs docs/benchmarks.md

$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e . -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/overhead.py $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python benchmarks/fingerprint.py $(FINGERPRINT_ARGS)

clean:
	rm -rf $(VENV) .pipedsl build dist *.egg-info
