# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_SYSTEM := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast lint install data clean-outputs help

help:
	@echo "make demo      - set up, fetch Fashion-MNIST and run the main job"
	@echo "make test      - set up and run the test suite (2 pytest-xdist workers)"
	@echo "make test-fast - the same without the tests marked slow (the inner loop)"
	@echo "make lint      - ruff and the import layers (lint-imports); CI runs it before make test"
	@echo "make data      - obtain Fashion-MNIST only"

# Exact pins (requirements.lock); torchattacks with --no-deps so it cannot pull a CUDA torch.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

install: $(STAMP)

# Fashion-MNIST: the Debian package's copy if present; else install it (root + apt); else the official URLs.
data: $(STAMP)
	@if [ -d $(FMNIST_SYSTEM) ]; then echo "Fashion-MNIST: $(FMNIST_SYSTEM)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; then \
	     echo "Fashion-MNIST: installed Debian's dataset-fashion-mnist into $(FMNIST_SYSTEM)"; \
	else $(PY) -m vrs.data.download fashion_mnist data; fi

# VRS vs fixed sigma end to end on the CPU (src/vrs/demo.py); DEMO_ARGS: Hydra overrides for its training.
demo: data
	$(PY) -m vrs.demo $(DEMO_ARGS)

# The suite on TEST_WORKERS pytest-xdist processes (TEST_WORKERS=0: one process); worksteal hands each worker
# half of the tests in file order (a file's fixtures are made once) and moves tests to whichever is idle.
# 2 workers, one thread each, measured fastest on 2 CPU cores (tests/conftest.py, README "Tests").
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# ruff (pyproject.toml [tool.ruff]; `check` only, never `format`) and import-linter's contracts on src/vrs
# ([tool.importlinter]: the layers, no library module importing the apps, no circles). Both pinned in requirements.lock.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean-outputs:
	rm -rf outputs/*/
