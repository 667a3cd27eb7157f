# Caliber's two commands: `make demo` runs the pasta example, `make test` runs every check
# (`make dist` builds the package for another machine).
# Each first makes sure .venv exists with the package installed (python3 -m venv, then
# pip install -e '.[dev,speckle,bench,dashboard,postgres]'); that step runs again only when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow"
PASTA := examples/pasta

.PHONY: help venv demo test lint typecheck pytest dist clean

help:
	@echo "make demo   set up .venv if needed, queue the pasta example, run it with a pinion,"
	@echo "            print its results"
	@echo "make test   set up .venv if needed, run ruff, mypy and pytest"
	@echo "            (slow fault-injection tests too: make test PYTEST_ARGS=)"
	@echo "make dist   build the sdist and the wheel into dist/ (pip install that wheel on the"
	@echo "            machine that runs a pinion)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,speckle,bench,dashboard,postgres]'
	@touch $(STAMP)

# The mission page's path: export, show, queue, let a pinion run the queue, read the results.
demo: $(STAMP)
	cd $(PASTA) && ../../$(BIN)/python main.py
	cd $(PASTA) && ../../$(BIN)/caliber workflow show pasta.json
	cd $(PASTA) && ../../$(BIN)/caliber workflow queue pasta.json -p mypinion
	cd $(PASTA) && ../../$(BIN)/caliber queue list --pinion mypinion
	cd $(PASTA) && ../../$(BIN)/caliber pinion init mypinion -a 1 -w 0
	cd $(PASTA) && ../../$(BIN)/python read_results.py

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# An sdist and a wheel of this checkout, built in an isolated environment (PEP 517).
dist: $(STAMP)
	rm -f dist/caliber_workflows-*
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist $(PASTA)/*.json
