# One command installs, one runs the demo, one runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-data
AS_OF  ?= 2025-11-15
DEMO_DB ?= demo.duckdb

.PHONY: install demo test test-fast lint bench clean

$(BIN)/pipecast: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/pipecast

demo: install
	rm -f $(DEMO_DB)
	$(BIN)/pipecast generate --deals 3000 --seed 7 --out $(DEMO)
	$(BIN)/pipecast load $(DEMO) --db $(DEMO_DB)
	$(BIN)/pipecast summary --db $(DEMO_DB)
	$(BIN)/pipecast metrics --as-of $(AS_OF) --db $(DEMO_DB) --plot demo-pipeline.png
	$(BIN)/pipecast review --as-of $(AS_OF) --min-amount 750000 --db $(DEMO_DB)
	$(BIN)/pipecast hygiene --as-of $(AS_OF) --db $(DEMO_DB) | tail -n 8

test: install
	$(BIN)/pytest -q -n 2

test-fast: install
	$(BIN)/pytest -q -n 2 -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/bench_generate_load.py --deals 100000
	$(BIN)/python benchmarks/bench_snapshots.py --deals 100000
	$(BIN)/python benchmarks/bench_pipeline.py --deals 30000

clean:
	rm -rf $(DEMO) $(DEMO_DB) demo-pipeline.png .pytest_cache .mypy_cache
