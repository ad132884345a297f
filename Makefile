# Halo Weave: `make run` starts the chat, `make test` runs every check. Both set up what is missing first; only the
# checks' set-up (setup-test) installs what the tests alone use: Chromium, Prometheus, Alertmanager, the `dev` extra.
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

VLLM_PY := .venv-vllm/bin/python

.PHONY: setup setup-test setup-vllm run test test-vllm lint typecheck unit bench clean help

help:
	@echo "make run     set up (first time: a few minutes) and start the chat; prints its URL"
	@echo "make test    set up and run every check: lint, types, unit, integration and end-to-end tests"
	@echo "make bench   run every benchmark under bench/ (tables on stdout, figures in bench/results/)"
	@echo "make setup   only the set-up for running; make setup-test adds what the checks use (Chromium, Prometheus, ...)"
	@echo "make setup-vllm   the vLLM engine's environment (make run ARGS=\"--engine vllm\"; docs/vllm.md)"

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --test

setup-vllm: setup
	@bash scripts/setup.sh --vllm

# `--engine vllm` needs the vLLM environment as well: set up on first use.
run: setup
	@$(if $(findstring vllm,$(ARGS)),bash scripts/setup.sh --vllm)
	@$(PY) -m devstack run $(ARGS)

lint: setup-test
	$(VENV)/bin/ruff check services devstack tests bench
	$(VENV)/bin/ruff format --check services devstack tests bench

typecheck: setup-test
	$(VENV)/bin/mypy

unit: setup-test
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

# The vLLM engine's own tests run in its environment (they import vLLM); the main run then includes the chat on it.
test: setup-test lint typecheck test-vllm
	$(PY) -m pytest $(PYTEST_ARGS)

test-vllm: setup-test
	$(VLLM_PY) -m pytest tests/vllm $(PYTEST_ARGS)

bench: setup-test
	$(PY) -m bench $(ARGS)

clean:
	rm -rf gen .state .pytest_cache .mypy_cache .ruff_cache
