# The single entry point: `make demo` runs the hub on its embedded defaults, `make test` runs every test.
# Every install step lives here: a local venv, nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo up test test-fast lint schemas bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/carehub demo

up: $(STAMP)
	$(VENV)/bin/carehub up

# The suite takes about 23 minutes on a 2-core machine, in TEST_WORKERS pytest processes (one file each
# at a time: most of a test's time is spent waiting on brokers, consumer groups and subprocesses, so
# two share two cores well; one after the other took 32). A run still going after 50 is stuck: SIGINT
# makes pytest print what failed so far (a hang at exit would otherwise eat CI's budget and say nothing).
TEST_WORKERS ?= 2
test: lint chromium
	$(PY) -m hub.specs --check
	timeout --signal=INT --kill-after=60 3000 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: $(STAMP) chromium
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium; its own browser download
# cannot work here). Needs root and apt; without them the browser tests skip, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "chromium not installed (needs root and apt-get): the browser tests will be skipped"

schemas: $(STAMP)
	$(PY) -m hub.specs

# About 25 minutes in all: load runs for 10 minutes and replay folds a million events.
bench: $(STAMP)
	$(PY) -m bench.ingest
	$(PY) -m bench.policy
	$(PY) -m bench.enforcement
	$(PY) -m bench.replay --events 1000000
	$(PY) -m bench.load --seconds 600

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
