# fedseg: set-up, checks and the demo. Everything runs from the virtualenv in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of torch lies on disk on our machines; pin it so pip never pulls CUDA.
TORCH  ?= torch==2.13.0

.PHONY: install test lint typecheck unit demo test-docker wheelhouse clean

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
	$(BIN)/pytest -m "not docker"

unit: install
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
