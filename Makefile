# Two entry points for a fresh machine:  `make run` (set up + main job), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.moonsweep-installed

.PHONY: setup sysdeps run test lint bench clean

# Rebuilt when the dependencies change. pip takes torch/torchvision from the ranges in
# pyproject.toml; on this project's machines pip's constraint file resolves them to the
# locally stored 2.14.1 / 0.29.1 pair.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

setup: $(STAMP)

# Chromium and PostgreSQL for the report and cluster tests (installed if missing).
sysdeps:
	bash .ci/system-deps.sh

run: setup
	$(BIN)/moonsweep run

lint: setup
	$(BIN)/ruff check .

test: setup sysdeps lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/study.py
	$(BIN)/python bench/sweep.py

clean:
	rm -rf $(VENV) moonsweep-runs .pytest_cache
