# Two commands: `make demo` sets up and runs the demo, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick wheel lint bench constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "esc-sync needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/esc-sync demo

# Everything (PostgreSQL and deployment tests need their services: see README), on every core.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n auto --dist worksteal $(PYTEST_ARGS)

# The fast loop while working: no end-to-end crash, fault, deployment, wheel or benchmark runs.
test-quick: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow" $(PYTEST_ARGS)

# What users install: the wheel in dist/, installed with the pinned dependencies into WHEEL_VENV (a
# fresh virtualenv; keep it outside the checkout). tests/test_wheel.py runs its commands when
# ESC_SYNC_TEST_WHEEL_VENV names it, and builds its own otherwise.
WHEEL_VENV ?= /tmp/esc-sync-wheel/venv
wheel: $(STAMP)
	rm -rf dist
	$(BIN)/python -m pip wheel -q --no-deps -w dist .
	$(PYTHON) -m venv --clear $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q -c constraints.txt dist/esc_sync-*.whl
	$(WHEEL_VENV)/bin/esc-sync --help >/dev/null
	@echo "wheel installed in $(WHEEL_VENV)"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/bench_ingest.py

constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .esc-sync
