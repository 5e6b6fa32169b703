# Entry points for a fresh machine (Python 3.11 with venv; Debian for the browser test):
#   make demo   sets everything up and builds the bundled sample into out/demo
#   make world  the synthetic world: build, train plain and grounded, evaluate, report, a retraining round (out/world)
#   make check  lint, type check and the fast tests (no servers, clusters, paper-size models, browser, slow)
#   make test   lint, type check and the whole suite, each test once, in one run (CI: .ci/run)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

# Tests with one of these marks (pyproject.toml describes them) stay out of `make check`.
HEAVY_TESTS := server or cluster or paper_size or browser or slow

.PHONY: setup demo world train-demo lint typecheck check test durations system-deps bench view

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/tokencompose build --demo --out out/demo

# the synthetic world end to end, plain vs grounded (docs/world.md): out/world/report.md; then one round of
# the scheduled retraining on it (grow, train a candidate, gate, registry): out/world/retrain.md
world: setup
	$(BIN)/tokencompose demo world --out out/world
	$(BIN)/tokencompose demo retrain --out out/world

train-demo: setup
	$(BIN)/tokencompose train --demo --output-dir runs/demo

system-deps:
	sh scripts/system-deps.sh

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy -p tokencompose

# Two pytest-xdist workers, one per core (tests/conftest.py gives each one intra-op thread); a test module
# stays on one worker, so its module-scoped fixtures (reference builds, clusters, models) are made once.
# Modules run longest first, by the seconds in tests/durations.json (`make durations` measures them again);
# xdist's own reordering, by test count, would undo that order.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder

check: lint typecheck
	$(PYTEST) -m "not ($(HEAVY_TESTS))"

test: lint typecheck system-deps
	$(PYTEST)

# the whole suite, recording each module's seconds into tests/durations.json (commit it when it changed)
durations: setup system-deps
	$(PYTEST) --record-durations

bench: setup
	$(BIN)/python bench/bench_build.py
	$(BIN)/python bench/bench_grounding.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_metrics.py

view: demo
	$(BIN)/tokencompose view out/demo
