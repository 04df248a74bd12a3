# The two commands of the README. Both build the project's own virtualenv from scratch if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Start the main job: the simulator's paper preset, printed as a table.
up: $(VENV)/.installed
	mkdir -p out && $(BIN)/ascendra sim --preset paper-sharegpt --json out/paper-sharegpt.json --plot out/paper-sharegpt.png

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# Every test, after the linter.
test: lint
	$(BIN)/python -m pytest -q
