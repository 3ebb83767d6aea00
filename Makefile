# Two commands a fresh machine needs (see README): `make demo` and `make test`.
# Both run scripts/setup.sh first (Debian packages, kernel-header links, .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
export HYPOTHESIS_PROFILE ?= fast

.PHONY: setup test unit integration lint demo bench clean

setup:
	@bash scripts/setup.sh

# The suite runs the compiled hot path (proxy/compiled.py); the pure-Python sources it is
# built from are the reference, so their own unit tests run again without it.
test: setup lint
	$(PY) -m pytest -q tests/unit tests/integration
	L7GATE_PURE=1 $(PY) -m pytest -q tests/unit/proxy_http tests/unit/test_compiled.py

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup
	$(PY) -m pytest -q tests/integration

lint: setup
	$(VENV)/bin/ruff check policy proxy redirect observe metrics agent tests scripts
	$(VENV)/bin/mypy --strict policy proxy

demo: setup
	$(VENV)/bin/l7gate demo

bench: setup
	$(PY) -m pytest -q -s -p no:cacheprovider -o addopts="" tests/bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build/mypyc
