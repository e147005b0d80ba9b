# The two commands: `make demo` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup up down status provision test test-unit demo backup bench lint fmt clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	@echo "==> setup: Python environment in $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade uv
	@$(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) ## create .venv and install dependencies (once; reused after)
	@bash infra/setup-system.sh

up: setup ## start Kafka (3 brokers) and Cassandra (3 nodes), provision topics and tables
	$(PY) -m infra up

down: ## stop every process `up` started
	@test -x $(PY) && $(PY) -m infra down || true

status: ## show node states
	$(PY) -m infra status

provision: ## create topics, keyspace and tables (idempotent)
	$(PY) -m infra provision

test-unit: setup ## unit tests only (no servers, seconds)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test: setup ## the whole suite: unit, integration and end-to-end (starts the clusters)
	$(PY) -m pytest tests/unit tests/integration tests/e2e -q $(PYTEST_ARGS)

demo: setup ## set everything up, run the pipeline end to end on sample photos, stop it all
	$(PY) -m demo

backup: setup ## back up the result keyspace (every node, manifest, Kafka offsets): docs/backup.md
	$(PY) -m infra backup

bench: setup ## benchmarks: model-only vs pipeline vs transport, then secure vs plaintext (bench/results/)
	$(PY) -m bench
	$(PY) -m bench.security_cost --quick

lint: setup ## ruff (lint and format drift) and mypy; fails on any finding
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy schemas infra producers consumers stream_app orchestration demo bench

fmt: setup ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: down ## stop the clusters and remove .run (keeps .venv and the Maven cache)
	rm -rf .run
