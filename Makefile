# One command installs, one runs the demo, one runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-data

.PHONY: install demo test test-fast lint bench clean

$(BIN)/pipecast: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/pipecast

demo: install
	$(BIN)/pipecast generate --deals 3000 --seed 7 --out $(DEMO)
	$(BIN)/pipecast load $(DEMO) --db pipecast.duckdb
	$(BIN)/pipecast summary --db pipecast.duckdb

test: install
	$(BIN)/pytest -q -n 2

test-fast: install
	$(BIN)/pytest -q -n 2 -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_generate_load.py

clean:
	rm -rf $(DEMO) pipecast.duckdb .pytest_cache .mypy_cache
