# Both targets build .venv from nothing; the stamp files re-install only when
# pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-cluster test-all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Editable installs import from src/: compile it once, so imports stay fast
# even where PYTHONDONTWRITEBYTECODE is set.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m compileall -q src
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q src
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m compileall -q src
	$(BIN)/sharkcage tank

test: $(VENV)/.installed-dev
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m pytest

# The soak and scale tests (minutes): CI runs them after `make test`.
test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m slow

# Real Dask and Ray clusters on 127.0.0.1 (the extras install on first use).
$(VENV)/.installed-cluster: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,dask,ray]'
	touch $@

test-cluster: $(VENV)/.installed-cluster
	$(BIN)/python -m pytest -m cluster

test-all: $(VENV)/.installed-cluster
	$(BIN)/python -m pytest -m ''

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
