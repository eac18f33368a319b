# seqops: `make help` lists the targets. Quick start: `make pipeline`, `make test`.
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup pipeline test test-unit test-matrix test-cluster cluster-up cluster-down lint format typecheck bench clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

setup: ## Create .venv and install seqops (CPU torch on CPU machines); idempotent
	@bash scripts/setup.sh

pipeline: setup ## Set up, then run the whole DVC pipeline (dvc repro) on the bundled default data
	$(BIN)/dvc repro

test: setup ## Set up, then run lint, the import-layer contracts and the whole test suite
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-unit: setup ## Only the fast unit tests (no Ray, no dvc repro)
	$(BIN)/python -m pytest tests/unit

test-matrix: setup ## The conformance matrix: one user-table difference per case, each through dvc repro (~10 min)
	$(BIN)/python -m pytest -m matrix tests/integration/test_conformance.py

cluster-up: setup ## The team profile on this machine: S3 (moto), PostgreSQL + MLflow server, two Ray nodes; then `source .cluster/env`
	bash scripts/cluster.sh up

cluster-down: ## Stop the team profile and remove .cluster/
	bash scripts/cluster.sh down

test-cluster: setup ## The cluster tests: team profile up; dvc repro, push and pull in team mode; serving and a promotion; a node lost mid-training; down (~6 min)
	$(BIN)/python -m pytest -m cluster tests/cluster

lint: setup ## ruff lint and format check, and the import-layer contracts
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: setup ## ruff format the code
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

typecheck: setup ## mypy on the packages
	$(BIN)/mypy

bench: setup ## Run the benchmarks (prints ratios against in-process baselines)
	$(BIN)/python benchmarks/padding.py
	$(BIN)/python benchmarks/data_throughput.py

clean: ## Remove pipeline outputs (not the venv, not the DVC cache)
	rm -rf data/events data/validated data/quarantine data/shards reports/*.json reports/data_docs
