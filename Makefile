# Two commands a fresh machine needs (see README): `make demo` and `make test`.
# Both run scripts/setup.sh first (Debian packages, kernel-header links, .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
export HYPOTHESIS_PROFILE ?= fast

.PHONY: setup test unit integration lint demo bench clean

setup:
	@bash scripts/setup.sh

test: setup lint
	$(PY) -m pytest -q tests/unit tests/integration

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup
	$(PY) -m pytest -q tests/integration

lint: setup
	$(VENV)/bin/ruff check policy proxy redirect observe metrics agent tests
	$(VENV)/bin/mypy --strict policy proxy

demo: setup
	$(VENV)/bin/l7gate demo

bench: setup
	$(PY) -m pytest -q -s -p no:cacheprovider -o addopts="" tests/bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
