# Two commands set everything up on a fresh machine with python3 and a package index:
#   make demo   creates .venv if missing, installs, runs the pipeline on synthetic demo data
#   make test   creates .venv if missing, installs, runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE ?= demo-store
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

# constraints.txt pins the versions the suite was last run with, so installs resolve fast and alike.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aml-smear demo --store $(DEMO_STORE)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_STORE) .pytest_cache

bench: $(STAMP)
	$(BIN)/python -m benchmarks
