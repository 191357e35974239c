# The venv's own python everywhere: `python3` on PATH may be a slow pyenv shim.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BASE_STAMP := $(VENV)/.installed-base
# a regular (not editable) install: the editable finder costs every Python start in the venv ~15 ms,
# which `servicefactory perform` would pay; reinstalled whenever a source file changes
SOURCES := $(shell find servicefactory cli -name '*.py' -o -name 'py.typed' -o -path '*/static/*' -type f)

.PHONY: run test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg setup.py pyproject.toml $(SOURCES)
	$(PY) -m pip install --quiet '.[test]'
	rm -rf build
	touch $(STAMP)

$(BASE_STAMP): $(PY) setup.cfg setup.py pyproject.toml $(SOURCES)
	$(PY) -m pip install --quiet .
	rm -rf build
	touch $(BASE_STAMP)

## make run: set up and run the demo service (the founding document's TestService) in the foreground
run: $(BASE_STAMP)
	$(PY) -m servicefactory.TestService

## make test: set up and run the whole test suite
test: $(STAMP)
	$(VENV)/bin/pytest -q -n 4

## make bench: measure against the peers (installs the bench extra)
bench: $(STAMP)
	$(PY) -m pip install --quiet '.[test,bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
