# fedseg: set-up, checks and the demo. Everything runs from the virtualenv in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of torch lies on disk on our machines; pin it so pip never pulls CUDA.
TORCH  ?= torch==2.13.0

.PHONY: install test lint typecheck unit demo test-docker test-browser wheelhouse clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy shared server client fedseg

test: lint typecheck
	$(BIN)/pytest -m "not docker and not browser"

# A whole federation on this machine: server + 3 sites, 5 rounds (about 3-4 minutes on 2 cores).
# `make demo DEMO_ARGS=--baseline` adds the central baseline (7-8 minutes in all).
DEMO_ARGS ?=
demo: install
	$(BIN)/fedseg simulate --workdir demo-out $(DEMO_ARGS)

unit: install
	$(BIN)/pytest tests/unit

# Every wheel the images need, for linux x86_64 CPython 3.11 (Debian bookworm's python3),
# into ./wheelhouse: the images install with pip --no-index (docker/wheelhouse.sh).
wheelhouse: install
	PIP=$(BIN)/pip PYTHON=$(BIN)/python TORCH="$(TORCH)" docker/wheelhouse.sh

# The dashboard in headless Chromium (Debian's chromium and chromium-driver must be installed).
test-browser: install
	$(BIN)/pytest -m browser tests/browser

# Real images and compose on a Docker engine (started here if none runs; needs root).
test-docker: wheelhouse
	FEDSEG_WHEELHOUSE_READY=1 $(BIN)/pytest -m docker tests/docker

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
