# The two commands a newcomer needs: `make up` and `make test`. Each sets up its own environment.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test bench clean setup postgres

# The embedded PostgreSQL runs the machine's server binaries (Debian's package `postgresql`). Where
# they are missing and no DATABASE_URL names a server, install the package (needs root or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
postgres:
	@[ -n "$$DATABASE_URL" ] || [ -n "$$PG_BIN" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || command -v initdb >/dev/null \
	  || { echo "installing the PostgreSQL server (Debian package postgresql) ..."; \
	       $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

setup: $(STAMP) postgres

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed ($(PYTHON) is older)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

up: setup
	$(BIN)/appeals up

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/appeals bench pipeline

clean:
	rm -rf $(VENV) var .pytest_cache
