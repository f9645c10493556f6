# Two commands set everything up on a fresh machine with python3 and a package index:
#   make demo   creates .venv if missing, installs, runs the pipeline on synthetic demo data
#   make test   creates .venv if missing, installs, runs the whole test suite
# and, to run the Prefect deployments on this machine (docs/deployments.md):
#   make prefect-local   Prefect server on 127.0.0.1, work pool, variables, deployments, worker
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE ?= demo-store
# Two processes, each test file whole in one (files share module fixtures and run in order);
# a CPU-bound test overlaps another's waiting on servers and subprocesses.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=25

.PHONY: install demo lint test test-benchmarks bench clean prefect-local

# constraints.txt pins the versions the suite was last run with, so installs resolve fast and alike.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aml-smear demo --store $(DEMO_STORE)

# The rules and the line length are in pyproject.toml ([tool.ruff]); `ruff format .` applies the format.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two sessions: the fault-injection tests (tests/reliability) start their own schedulers, workers and
# servers, and in fresh worker processes they do not meet the 4-5 GB that a worker of the main
# session holds by its end (two such and a killed-worker test at once ran a 23 GB machine out of memory).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) --ignore=tests/reliability
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests/reliability

# The benchmarks' whole-script smoke runs (about 6 minutes), left out of `make test`.
test-benchmarks: $(STAMP)
	$(BIN)/python -m pytest -m benchmark_smoke tests/benchmarks

clean:
	rm -rf $(DEMO_STORE) .pytest_cache

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# Foreground until Ctrl-C, which stops the worker, then the server. Set STORE (and
# RETRAIN_SOURCES, space-separated; offline BACKBONE_WEIGHTS and BACKBONE_WEIGHTS_SHA256) for the
# Prefect variables on the first run; later, `prefect variable set NAME VALUE --overwrite`.
PREFECT_PORT ?= 4200
AML_SMEAR_LOCAL ?= $(HOME)/.aml-smear
STORE ?= $(AML_SMEAR_LOCAL)/store
RETRAIN_SOURCES ?=
BACKBONE_WEIGHTS ?=
BACKBONE_WEIGHTS_SHA256 ?=
prefect-local: $(STAMP)
	$(BIN)/python -m app.local_stack up --port $(PREFECT_PORT) --home $(AML_SMEAR_LOCAL) \
		--store $(STORE) $(foreach source,$(RETRAIN_SOURCES),--retrain-source $(source)) \
		$(if $(BACKBONE_WEIGHTS),--backbone-weights $(BACKBONE_WEIGHTS)) \
		$(if $(BACKBONE_WEIGHTS_SHA256),--backbone-weights-sha256 $(BACKBONE_WEIGHTS_SHA256))
