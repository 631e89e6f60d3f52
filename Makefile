# d365ct — the two commands a user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
BENCH ?=
BENCH_SCALE ?= 1
PYTEST_ARGS ?=

.PHONY: install browser test lint types pytest demo bench clean lock screenshots

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(NODE_STAMP): package-lock.json package.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(PY_STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools

types: $(PY_STAMP)
	$(BIN)/mypy

# The dashboard's browser tests drive Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || [ -n "$$D365CT_CHROMIUM" ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make browser: Chromium is missing and could not be installed (needs root and apt-get):" \
	    "the dashboard's browser tests will fail. Install it: sudo apt-get install chromium" >&2

pytest: install browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

screenshots: install browser
	$(BIN)/python -m tools.screenshots

test: lint types pytest

demo: install
	$(BIN)/d365ct demo

bench: install
	BENCH="$(BENCH)" BENCH_SCALE="$(BENCH_SCALE)" $(BIN)/python -m bench

lock:
	uv pip compile pyproject.toml --extra dev --generate-hashes --no-header --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
