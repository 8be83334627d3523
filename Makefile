# The two commands: `make run` and `make test`. Each sets up .venv/ on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines (no nvidia-smi) pin the CPU torch wheel so pip never pulls a multi-GB
# CUDA build; GPU machines keep whatever CUDA torch the range admits.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH_PIN := $(if $(HAS_GPU),,torch==2.13.0)
PIP_INSTALL := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt
ifeq ($(HAS_GPU),1)
PIP_INSTALL := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt
endif
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: run test lint bench setup setup-dev clean

run: $(VENV)/.setup
	$(BIN)/gae run $(RUN_ARGS)

test: $(VENV)/.setup-dev
	$(BIN)/ruff check gae tasks flows tests bench
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.setup-dev
	$(BIN)/ruff check gae tasks flows tests bench

bench: $(VENV)/.setup-dev
	$(BIN)/python bench/advantages.py

setup: $(VENV)/.setup
setup-dev: $(VENV)/.setup-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.setup: pyproject.toml constraints.txt constraints-cpu.txt | $(VENV)/bin/python
	$(PIP_INSTALL) $(TORCH_PIN) -e .
	touch $@

$(VENV)/.setup-dev: pyproject.toml constraints.txt constraints-cpu.txt | $(VENV)/bin/python
	$(PIP_INSTALL) $(TORCH_PIN) -e '.[dev]'
	touch $@ $(VENV)/.setup

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
