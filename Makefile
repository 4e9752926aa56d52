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

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) .pipedsl build dist *.egg-info
