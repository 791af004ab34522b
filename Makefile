# eventq: the two commands (`make run`, `make test`) and the rest of the workflow.
# Every target creates the project's own virtual environment first; that step is
# skipped when setup.cfg and requirements.lock have not changed since the last install.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EVENTQ_HOST ?= 127.0.0.1
EVENTQ_PORT ?= 9993
export EVENTQ_HOST EVENTQ_PORT

.PHONY: run serve cluster test check migrate bench clean venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

migrate: $(STAMP)
	$(BIN)/eventq migrate

run: migrate
	$(BIN)/eventq serve --host $(EVENTQ_HOST) --port $(EVENTQ_PORT) --demo

# nginx on EVENTQ_PORT and three shards on the ports after it, on the same database
# (needs nginx: Debian's nginx-light is enough).
cluster: migrate
	$(BIN)/eventq cluster --shards 3 --host $(EVENTQ_HOST) --port $(EVENTQ_PORT) --demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var/*.sqlite3 var/*.sqlite3-* var/cluster .pytest_cache .mypy_cache .ruff_cache
