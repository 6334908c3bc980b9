# Every target runs inside .venv, which `setup` creates from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SEEDS  ?= 1000
# CI runs the full simulator campaign; a developer can lower it: make test SIM_SEEDS=500
SIM_SEEDS ?= 10000

.PHONY: setup demo test lint sim bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@

# A 4-broker, two-region cluster on loopback: write, kill -9 a leader, read everything back.
demo: setup
	$(PY) -m broker.demo

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup lint
	$(PY) -m pytest -n 2 -q tests
	$(PY) -m tests.sim.run --seeds $(SIM_SEEDS) --jobs 2

sim: setup
	$(PY) -m tests.sim.run --seeds $(SEEDS) --jobs 2

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
