# callstream — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint check venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## replay the shipped fixture calls through the real server (no credentials, no network)
demo: venv
	$(BIN)/callstream replay fixtures/calls --out out/demo

## the test suite (pure cores and real sockets; Redis-backed tests need redis-server)
test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check agent media twiml tests fixtures
	$(BIN)/mypy media twiml agent

check: lint test

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
