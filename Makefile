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
# backbone=timm needs timm, and timm needs a torchvision built for the same torch: PyPI's
# torchvision does not load beside the torch 2.13.0 CPU wheel, so its tests run in a venv of
# their own with a torch / torchvision pair that PyPI ships together (`make test-vision`).
VISION_VENV ?= .venv-vision
VISION_TORCH ?= torch==2.14.1 torchvision==0.29.1
VISION_STAMP := $(VISION_VENV)/.metarun-installed

.PHONY: run test test-without-data test-vision soak fuzz lint install clean

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

# The timm tests (marked timm; the main suite skips them where timm does not import) in
# .venv-vision: metarun with its dev and vision extras beside VISION_TORCH.
$(VISION_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VISION_VENV)/bin/python -m pip install --quiet $(VISION_TORCH)
	$(VISION_VENV)/bin/python -m pip install --quiet -e ".[dev,vision]"
	@touch $@

test-vision: $(VISION_STAMP)
	$(VISION_VENV)/bin/python -m pytest -m timm $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(VISION_VENV) .pytest_cache
