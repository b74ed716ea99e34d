# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_SYSTEM := /usr/share/datasets/fashion-mnist

.PHONY: demo test install data clean-outputs help

help:
	@echo "make demo   - set up, fetch Fashion-MNIST and run the main job"
	@echo "make test   - set up and run the test suite"
	@echo "make data   - obtain Fashion-MNIST only"

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

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean-outputs:
	rm -rf outputs/*/
