PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint bench clean

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'

# One worker per core (at most 4: each imports torch): the suite is mostly single-threaded tests.
PYTEST := $(BIN)/python -m pytest -q -n auto --maxprocesses 4

test: lint
	$(PYTEST)

test-fast:
	$(PYTEST) -m "not slow"

lint:
	$(BIN)/ruff check dsetool hw tests benchmarks
	$(BIN)/mypy dsetool hw

bench:
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/inject_throughput.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
