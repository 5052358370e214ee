# One command installs, one runs the demo, one runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-data
AS_OF  ?= 2025-11-15
DEMO_QUARTER ?= 2025Q4
DEMO_DB ?= demo.duckdb

.PHONY: install demo test test-fast must-show lint bench clean

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
	$(BIN)/pipecast train --as-of $(AS_OF) --db $(DEMO_DB)
	COLUMNS=160 $(BIN)/pipecast score --as-of $(AS_OF) --db $(DEMO_DB) --top 10
	$(BIN)/pipecast forecast --quarter $(DEMO_QUARTER) --as-of $(AS_OF) --db $(DEMO_DB) --plot demo-forecast.png

test: install
	$(BIN)/pytest -q -n 2

test-fast: install
	$(BIN)/pytest -q -n 2 -m "not slow"

# The issue's must-show backtests on 20k generated deals (20+ minutes on 2 cores).
must-show: install
	PIPECAST_MUST_SHOW=1 $(BIN)/pytest -q tests/test_backtest.py -k "must_show or strong_quarter"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/bench_generate_load.py --deals 100000
	$(BIN)/python benchmarks/bench_snapshots.py --deals 100000
	$(BIN)/python benchmarks/bench_pipeline.py --deals 30000
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_forecast.py
	$(BIN)/python benchmarks/bench_api.py

clean:
	rm -rf $(DEMO) $(DEMO_DB) $(DEMO_DB:.duckdb=.forecast-cache) demo-pipeline.png demo-forecast.png .pytest_cache .mypy_cache
