# The two set-up commands: `make run` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= INFO
# a loaded 2-core machine can need more than Prefect's default 20 s to start its
# temporary server
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: run test lint typecheck down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: install, push the example dataset if there is none, run the whole pipeline locally
run: $(STAMP)
	$(BIN)/sagepipe data push --example --if-missing
	$(BIN)/sagepipe run

## test: install and run every test
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## down: stop local endpoints and jobs
down: $(STAMP)
	$(BIN)/sagepipe down

clean: down
	rm -rf .sagepipe
