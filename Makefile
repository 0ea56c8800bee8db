# The single entry point: `make demo` runs the hub on its embedded defaults, `make test` runs every test.
# Every install step lives here: a local venv, nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo up test test-fast lint schemas bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/carehub demo

up: $(STAMP)
	$(VENV)/bin/carehub up

test: lint
	$(PY) -m hub.specs --check
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

schemas: $(STAMP)
	$(PY) -m hub.specs

bench: $(STAMP)
	$(PY) -m bench.ingest
	$(PY) -m bench.policy
	$(PY) -m bench.enforcement

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
