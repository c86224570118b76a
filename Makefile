# Each target bootstraps .venv by itself, so any of them works alone on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-slow report report-quick bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# ruff first (seconds), then the correctness suite with the doctests of every module.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow" --doctest-modules manual reference suite

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal -m slow suite/tests

report: $(STAMP)
	$(VENV)/bin/backprop-suite report --device cpu --devices 4 --out reports

report-quick: $(STAMP)
	$(VENV)/bin/backprop-suite report --quick --device cpu --out reports

bench: $(STAMP)
	$(VENV)/bin/backprop-suite bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
