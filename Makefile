PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint bench clean

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'

test: lint
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

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
