# llamastream: `make help` lists the targets a person needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export LLAMA_KAFKA_BOOTSTRAP ?= 127.0.0.1:9092
export LLAMA_DATABASE_URL ?= postgresql+asyncpg://llama:llama@127.0.0.1:5432/llamastream

.DEFAULT_GOAL := help
.PHONY: help install services up down status watch test test-unit lint bench clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(PY): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,lint,bench]"
	@touch $(PY)

install: $(PY) ## Create .venv and install the project with its test and bench extras

services: ## Install (if missing) and start Kafka, Redis and PostgreSQL
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/services.sh up

up: install services ## Services, the faust worker and a replay of real data (watch with `make watch`)
	PYTHON=$(PY) scripts/pipeline.sh start
	@echo "watch the derived topics: make watch TOPIC=tvl.updates KEY=Terra   (or price.updates, yields.updates, chain.events)"

down: ## Stop the replay, the worker and the services
	-PYTHON=$(PY) scripts/pipeline.sh stop
	scripts/services.sh down

status: ## What is running
	@PYTHON=$(PY) scripts/pipeline.sh status; scripts/services.sh status

TOPIC ?= tvl.updates
KEY ?=
watch: ## Print a topic as it flows, e.g. make watch TOPIC=price.updates KEY=terra
	$(PY) -m pipeline.watch $(TOPIC) $(if $(KEY),--key "$(KEY)")

test: install lint services ## The whole suite: lint, unit tests and integration tests on the real services
	$(PY) -m pytest

lint: install ## ruff and mypy --strict on the packages
	$(VENV)/bin/ruff check pipeline agents tables web tests
	$(VENV)/bin/mypy pipeline agents tables web

test-unit: install ## Unit tests only (no services)
	$(PY) -m pytest tests/unit

bench: install services ## Throughput and latency benchmarks; figures in bench/results/
	$(PY) -m bench.pipeline_bench
	$(PY) -m bench.sidecar_bench
	$(PY) -m bench.alerts_bench

clean: ## Remove local state (var/) and the virtualenv
	rm -rf var $(VENV)
