# Set-up on a fresh machine: each target creates .venv if missing and installs CPU torch 2.13.0 with the
# package and its extras in one pip command (so no CUDA build of torch is pulled). Re-runs skip the
# install unless pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: study test bench deep-linear autoencoder-training

study: $(INSTALLED)
	$(PY) -m experiments.a6_study $(ARGS)

test: $(INSTALLED)
	$(PY) -m pytest -q $(ARGS)

deep-linear: $(INSTALLED)
	$(PY) -m experiments.deep_linear $(ARGS)

autoencoder-training: $(INSTALLED)
	$(PY) -m experiments.autoencoder_training $(ARGS)

bench: $(INSTALLED)
	$(PY) -m benchmarks.bench_step
	$(PY) -m benchmarks.bench_aux

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[experiments,dev]"
	touch $(INSTALLED)
