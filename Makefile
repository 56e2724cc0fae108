# Set-up on a fresh machine: each target creates .venv if missing and installs CPU torch 2.13.0 with the
# package and its extras in one pip command (so no CUDA build of torch is pulled). Re-runs skip the
# install unless pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: help study test lint format bench deep-linear autoencoder-training

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

study: $(INSTALLED)  ## the Appendix A.6 study on the embedded MNIST digits -> results/a6/ (ARGS="--quick": smoke run; ARGS="--model cnn" or "--model transformer" -> results/a6-<model>/)
	$(PY) -m experiments.a6 $(ARGS)

test: lint  ## lint, format check and type check, then the test-suite on every core (pytest-xdist; ARGS: extra pytest arguments)
	$(PY) -m pytest -q -n auto $(ARGS)

deep-linear: $(INSTALLED)  ## Figure 1 (deep linear network) -> results/deep_linear/ (ARGS="--quick": smoke run)
	$(PY) -m experiments.deep_linear $(ARGS)

autoencoder-training: $(INSTALLED)  ## Figures 2-3 (autoencoder training) -> results/autoencoder_training/
	$(PY) -m experiments.autoencoder_training $(ARGS)

lint: $(INSTALLED)  ## ruff (lint and format check) and mypy on the whole repository
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(INSTALLED)  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(INSTALLED)  ## the speed benchmarks (step cost on three models, auxiliary fit step, einsum orders)
	$(PY) -m benchmarks.bench_step --model autoencoder
	$(PY) -m benchmarks.bench_step --model deep_linear
	$(PY) -m benchmarks.bench_step --model transformer
	$(PY) -m benchmarks.bench_aux
	$(PY) -m benchmarks.bench_einsum

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[experiments,dev]"
	touch $(INSTALLED)
