# Halo Weave: `make run` starts the chat, `make test` runs every check. Both set up what is missing first.
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup run test lint typecheck unit bench clean help

help:
	@echo "make run     set up (first time: a few minutes) and start the chat; prints its URL"
	@echo "make test    set up and run every check: lint, types, unit, integration and end-to-end tests"
	@echo "make bench   run every benchmark under bench/ (tables on stdout, figures in bench/results/)"

setup:
	@bash scripts/setup.sh

run: setup
	@$(PY) -m devstack run $(ARGS)

lint: setup
	$(VENV)/bin/ruff check services devstack tests bench
	$(VENV)/bin/ruff format --check services devstack tests bench

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

test: setup lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(ARGS)

clean:
	rm -rf gen .state .pytest_cache .mypy_cache .ruff_cache
