PYTHON ?= python3
NPM ?= npm
PYTEST_ARGS ?=

VENV := .venv
BIN := $(VENV)/bin
# Stamps live inside the directories they describe, so deleting .venv or node_modules
# also forgets that they were set up.
PY_STAMP := $(VENV)/.setup-stamp
NODE_STAMP := engine/node_modules/.setup-stamp

.PHONY: setup test lint format demo bench clean distclean

setup: $(PY_STAMP) $(NODE_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(PY_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

$(NODE_STAMP): engine/package.json engine/package-lock.json
	$(NPM) ci --prefix engine
	@touch $@

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(PY_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: setup
	$(BIN)/python -m worker demo

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf .demo .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path './engine/node_modules/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) engine/node_modules
