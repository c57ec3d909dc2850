# probnet: `make demo` runs the main job, `make test` the whole suite (both create .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python experiments/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests --nbmake notebooks

lint: $(STAMP)
	$(BIN)/ruff check probnet experiments tests
	$(BIN)/ruff format --check probnet experiments tests

format: $(STAMP)
	$(BIN)/ruff format probnet experiments tests
	$(BIN)/ruff check --fix probnet experiments tests

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

-include bench-env.mk
