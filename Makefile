PYTHON ?= python3
NPM ?= npm
PYTEST_ARGS ?=

VENV := .venv
BIN := $(VENV)/bin
# Stamps live inside the directories they describe, so deleting .venv or node_modules
# also forgets that they were set up.
PY_STAMP := $(VENV)/.setup-stamp
NODE_STAMP := engine/node_modules/.setup-stamp

# Debian packages some tests drive: prometheus and promtool (alert rules, a real scrape),
# docker-compose (validating docker-compose.yml without a Docker engine), psql (the read-only
# dashboard role script), chromium and chromedriver (the demo's dashboard page opened in a
# headless browser, driven by selenium). Installed when missing and possible (root with
# apt-get); otherwise the tests that need them skip and say why.
SYSTEM_TOOLS := prometheus promtool docker-compose psql chromium chromedriver
SYSTEM_PACKAGES := prometheus docker-compose postgresql-client chromium chromium-driver

# The C sketch merge for the embedded engine (engine/sketch/Makefile), with the Debian packages
# it builds with, installed when missing and possible. Without it the engine still runs and its
# sketches merge in PL/pgSQL, several times slower; the suite's check of the engine fails.
SKETCH_BUNDLE := engine/sketch/observability_sketch.tar.gz
SKETCH_PACKAGES := clang-14 lld-14 wasi-libc postgresql-server-dev-all

.PHONY: setup sketch-server sketch-install system-tools test test-faults fuzz lint format demo bench clean distclean

setup: $(PY_STAMP) $(NODE_STAMP) $(SKETCH_BUNDLE)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(PY_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

$(NODE_STAMP): engine/package.json engine/package-lock.json
	$(NPM) ci --prefix engine
	@touch $@

$(SKETCH_BUNDLE): engine/sketch/observability_sketch.c engine/sketch/Makefile
	@if ! command -v clang-14 >/dev/null 2>&1 || ! command -v wasm-ld-14 >/dev/null 2>&1 \
	    || [ ! -f /usr/include/wasm32-wasi/stdlib.h ] \
	    || [ ! -f "$$(pg_config --includedir-server 2>/dev/null)/postgres.h" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages to build engine/sketch: $(SKETCH_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(SKETCH_PACKAGES) >/dev/null; \
	  fi; \
	fi
	@$(MAKE) --no-print-directory -C engine/sketch wasm >/dev/null \
	  || echo "warning: engine/sketch was not built (needs $(SKETCH_PACKAGES));" \
	    "the embedded engine merges sketches in PL/pgSQL" >&2

# The same C merge for a PostgreSQL server (docs/deployment.md), built with PGXS against the
# server that PG_CONFIG names, and installed into its library directory.
PG_CONFIG ?= pg_config

sketch-server:
	$(MAKE) -C engine/sketch PG_CONFIG=$(PG_CONFIG)

sketch-install: sketch-server
	$(MAKE) -C engine/sketch PG_CONFIG=$(PG_CONFIG) install

system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "warning: missing$$missing; install $(SYSTEM_PACKAGES) or their tests skip" >&2; \
	  fi; \
	fi

test: setup system-tools
	$(BIN)/pytest $(PYTEST_ARGS)

# Only the fault tests (marked `faults`): killed workers, lost or frozen database links, Redis
# killed under a running task. `make test` runs them too.
test-faults: setup system-tools
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

# The oracle (tests/oracle/) with random seeds until FUZZ_SECONDS have passed, each case on a
# clean database. The seed is printed first; `make fuzz FUZZ_SEED=...` replays it.
FUZZ_SECONDS ?= 1800
FUZZ_SEED ?=

fuzz: setup
	@seed="$(FUZZ_SEED)"; \
	if [ -z "$$seed" ]; then seed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); fi; \
	echo "FUZZ_SEED=$$seed (replay: make fuzz FUZZ_SEED=$$seed)"; \
	ORACLE_FUZZ=1 FUZZ_SEED=$$seed FUZZ_SECONDS=$(FUZZ_SECONDS) \
	  $(BIN)/pytest tests/integration/test_oracle.py -k fuzz -s -p no:cacheprovider \
	  -o timeout=0 $(PYTEST_ARGS)

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(PY_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# e.g. make demo DEMO_ARGS="--traces-per-hour 100 --fresh"
DEMO_ARGS ?=

demo: setup
	$(BIN)/python -m worker demo $(DEMO_ARGS)

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf .demo .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path './engine/node_modules/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) engine/node_modules engine/sketch/wasm32 $(SKETCH_BUNDLE)
