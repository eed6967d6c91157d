# Two commands do everything: `make run` and `make test`. Each creates (or reuses) .venv with
# metarun installed from pyproject.toml. TORCH picks the PyTorch build pip installs first:
# the default pins the release metarun is tested with; GPU users can pass their own, e.g.
#   make run TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.metarun-installed

.PHONY: run test test-without-data soak fuzz lint install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "metarun needs Python >= 3.10; set PYTHON=python3.11 (for example)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/metarun $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that need the Omniglot archives, with METARUN_TEST_DATA pointing nowhere: each must
# skip (with a line saying how to enable it), none may fail. A clone without ../shared is this.
test-without-data: $(STAMP)
	METARUN_TEST_DATA=/nonexistent $(BIN)/python -m pytest -m omniglot $(PYTEST_ARGS)

# 300 random values for the schemas' fields through the CLI: each a run or a one-line error,
# no earlier folder changed (scripts/fuzz.py; bounded to 10 minutes).
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz.py --draws 300 --seed 0 --budget 600

# 200 short jobs with random overrides in one multirun: each finishes or fails in one line.
soak: $(STAMP)
	$(BIN)/python tests/soak.py --runs 200

lint: $(STAMP)
	$(BIN)/ruff check metarun tests scripts
	$(BIN)/ruff format --check metarun tests scripts

clean:
	rm -rf $(VENV) .pytest_cache
