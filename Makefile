# The two commands a newcomer needs: `make up` and `make test`. Each sets up its own environment.
PYTHON ?= python3
# The console's browser tests drive Debian's Chromium (Playwright never downloads a browser here);
# a CJK font so the pages' Chinese renders in the screenshots.
CHROMIUM := /usr/bin/chromium
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: up test lint unit bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed ($(PYTHON) is older)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/appeals up

$(CHROMIUM):
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-wqy-microhei

# Cheapest first, so a mistake fails in seconds: lint and types, then the tests that start nothing
# (the import contract among them), then the tests on the real broker, Redis and services.
# One recipe, so the order holds under `make -j` too.
test: lint $(CHROMIUM)
	$(PYTEST) -m "not integration"
	$(PYTEST) -m integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services

unit: $(STAMP)
	$(PYTEST) -m "not integration"

bench: $(STAMP)
	$(BIN)/appeals bench pipeline

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
