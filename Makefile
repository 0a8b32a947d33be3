# Two entry points for a fresh machine: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint unit integration bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# (setuptools' editable-install banner is a warning to package authors, not to users)
	PYTHONWARNINGS=ignore $(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/migrator demo

lint: $(BIN)/.installed
	$(BIN)/ruff check migrator tests jobs
	$(BIN)/ruff format --check migrator jobs
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/python -m pytest tests/unit

integration: $(BIN)/.installed
	$(BIN)/python -m pytest tests/integration

# pytest exits 5 when it collects no test: make fails on any non-zero exit, so that cannot pass.
test: lint
	$(BIN)/python -m pytest

# The benchmark (not part of the tests): `make bench`, or `make bench ARGS="--runs 200"`.
bench: $(BIN)/.installed
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
