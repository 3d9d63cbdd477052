# refund-bridge: the commands a developer and CI run. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help test check lint typecheck pytest dev demo install directus postgres chromium wrk bench clean openapi

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create the virtualenv and install the package with its test extras

directus:  ## install the pinned Directus into the cache folder (once; reused)
	bash scripts/install-directus.sh >/dev/null

postgres:  ## make sure PostgreSQL's binaries are there for the throwaway test clusters
	bash scripts/ensure-postgres.sh

wrk:  ## make sure wrk (Debian's package) is there: the benchmark's load generator
	bash scripts/ensure-wrk.sh

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)  ## mypy on our packages
	$(VENV)/bin/mypy

chromium:  ## make sure Debian's Chromium is there for the browser tests (tests/browser/)
	bash scripts/ensure-chromium.sh

pytest: $(STAMP) directus postgres chromium  ## the whole pytest suite (real Directus, SMTP sink, PostgreSQL, Chromium)
	$(VENV)/bin/pytest

test: lint typecheck pytest  ## everything CI runs: lint, types, all tests
	node --test directus-extension/test/

dev:  ## run the whole flow locally and show a refund (Ctrl-C stops it; DEV_ARGS="--no-demo")
	@# On a fresh machine the virtualenv (pip) and Directus (npm) install side by side.
	@$(MAKE) --no-print-directory -s -j2 install directus
	$(PY) -m devstack up $(DEV_ARGS)

demo: $(STAMP)  ## one refund end to end against the running `make dev` (DEMO_ARGS="--order demo-1001")
	$(PY) -m devstack demo $(DEMO_ARGS)

openapi: $(STAMP)  ## regenerate docs/openapi.json from the marshmallow schemas (a test fails when it drifts)
	$(VENV)/bin/refund-bridge openapi

$(VENV)/.bench-installed: $(STAMP) setup.cfg
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench-installed directus postgres wrk  ## the benchmark, docs/performance.md (about 1.5 h; BENCH_ARGS="--quick" or "--scenarios ...")
	$(PY) -m bench $(BENCH_ARGS)

clean:  ## remove the virtualenv and local state (not the Directus cache)
	rm -rf $(VENV) instance .dev .pytest_cache .mypy_cache .ruff_cache
