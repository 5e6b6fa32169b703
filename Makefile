# Two entry points for a fresh machine (Python 3.11 with venv; Debian for the browser test):
#   make demo   sets everything up and builds the bundled sample into out/demo
#   make test   sets everything up and runs the whole test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup demo train-demo test system-deps bench view

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/tokencompose build --demo --out out/demo

train-demo: setup
	$(BIN)/tokencompose train --demo --output-dir runs/demo

system-deps:
	sh scripts/system-deps.sh

test: setup system-deps
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/bench_build.py
	$(BIN)/python bench/bench_grounding.py
	$(BIN)/python bench/bench_train.py

view: demo
	$(BIN)/tokencompose view out/demo
