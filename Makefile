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

## test: install and run every test, TEST_WORKERS files at a time (TEST_WORKERS=0: serially)
# Most of the suite waits on subprocesses and servers, so more workers than cores pays.
# Each worker has its own temporary Prefect server; --dist loadfile keeps a file's tests
# together and in order (module fixtures, tests that build on each other); the slowest
# files go first (tests/conftest.py), which --no-loadscope-reorder keeps.
TEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## infra-check: cfn-lint (no errors, no warnings), checkov (no failed check) and parliament
## (no IAM finding that infra/lint_iam.py does not suppress with its reason) on infra/
# checkov pins a boto3 the project cannot use, so it lives in a venv of its own,
# installed from PyPI on first use. --skip-download: no call to Prisma Cloud.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
.PHONY: infra-check

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

infra-check: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/cfn-lint --non-zero-exit-code warning infra/*.yaml
	$(CHECKOV_VENV)/bin/checkov --directory infra --framework cloudformation --skip-download \
		--quiet --compact
	$(BIN)/python infra/lint_iam.py

## bench: what the pipeline costs vs the bare scripts and Metaflow (bench/README.md);
## writes bench/results/latest.json and prints a table. BENCH_QUICK=1: a fast smoke run.
# Metaflow is the benchmark's peer, never a project dependency: it gets a venv of its
# own, with the container scripts' packages at the project venv's exact versions.
BENCH_VENV := bench/.venv-metaflow
BENCH_STAMP := $(BENCH_VENV)/.installed
.PHONY: bench

$(BENCH_STAMP): bench/peers/requirements.txt $(STAMP)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BIN)/pip freeze --exclude-editable > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/pip install --quiet -c $(BENCH_VENV)/constraints.txt \
		-r bench/peers/requirements.txt
	touch $@

bench: $(STAMP) $(if $(BENCH_ONLY),,$(BENCH_STAMP))
	$(BIN)/python -m bench

## prefect-up: a local Prefect server (http://127.0.0.1:4200) and a process worker for the
## sagepipe-local pool; logs, pids and its database under .sagepipe/prefect/
## prefect-down: stop them
.PHONY: prefect-up prefect-down lambda relay
prefect-up: $(STAMP)
	$(BIN)/sagepipe server up

prefect-down: $(STAMP)
	$(BIN)/sagepipe server down

## lambda: build/trigger-lambda.zip, the CodePipeline trigger (handler: handler.handler)
## relay: build/relay-lambda.zip, the SageMaker -> Prefect event relay (handler: relay.handler)
lambda:
	$(PYTHON) deployments/trigger/build.py --output build/trigger-lambda.zip

relay:
	$(PYTHON) deployments/relay/build.py --output build/relay-lambda.zip

## screenshot: check that the run record's plots render in the Prefect UI: a local Prefect
## server, two pipeline runs, headless Chromium (Debian's chromium, installed here if
## missing); screenshots in build/screenshots/ (run-record.png, run-record-v2.png, ...)
# Every step has a deadline, so CI cannot hang here.
SCREENSHOT_TIMEOUT ?= 1200
.PHONY: screenshot
screenshot: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Installing Debian's chromium with apt-get"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		timeout 600 $$SUDO apt-get update -qq && \
		timeout 900 $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	SAGEPIPE_SCREENSHOT=1 timeout --kill-after=30 $(SCREENSHOT_TIMEOUT) \
		$(BIN)/python -m pytest -q tests/ui

## faults: the fault-injection suite (issue 19, README "When a process dies"): SIGKILL the
## CLI, a job runner, an endpoint's server or supervisor, or every process at FAULTS_POINTS
## points from a run's own boundaries (seed FAULTS_SEED), run again, check the invariants;
## prints the table, writes bench/results/faults.json. FAULTS_CI=1: the 8-point CI subset
## (faults-ci.json). Runs under nice: it is long, and the machine is shared.
FAULTS_POINTS ?= 30
FAULTS_SEED ?= 19
.PHONY: faults
faults: $(STAMP)
	nice -n 10 $(BIN)/python tests/faults/fault_suite.py --points $(FAULTS_POINTS) \
		--seed $(FAULTS_SEED) $(if $(FAULTS_CI),--ci)

## down: stop local endpoints and jobs
down: $(STAMP)
	$(BIN)/sagepipe down

clean: down prefect-down
	rm -rf .sagepipe
