# Developer targets; `make help` lists them. docs/tests.md describes the tiers.
# The tools come from .venv when it exists (make setup), else from the active environment.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.DEFAULT_GOAL := help
.PHONY: help setup lint test test-integration test-all slow demo

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## create .venv with the worker, model_build and dev tools (deploy/local/setup.sh)
	bash deploy/local/setup.sh

lint: ## ruff check, ruff format --check and mypy
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

test: ## the fast tier: tests/unit, about 20 s (the same as plain `pytest`)
	$(PYTHON) -m pytest

test-integration: ## the integration tier without the slow tests (real Redis, S3, OpenVINO; minutes)
	$(PYTHON) -m pytest tests/integration

test-all: ## what CI runs (.ci/run): setup, lint and every tier, then the slow tier
	bash .ci/run

slow: ## the slow tier: setup, lint, then the tests marked slow (deploy/local/test.sh -m slow)
	bash deploy/local/test.sh -m slow

demo: ## the offline demo (deploy/local/demo.sh); LCM_DEMO_KEEP=1 leaves S3 running
	bash deploy/local/demo.sh
