# slabkit: the two commands a newcomer needs are `make demo` and `make test`.
# Each does its own set-up: a virtualenv with the Python deps, and (as root) the Debian
# packages the tracers need plus a mounted tracefs (.ci/install-system).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slabkit-installed

.PHONY: demo test lab bench setup system test-kernels test-stap

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# Debian packages for the tracers and tests, and tracefs; a no-op with a message when not root.
system:
	@bash .ci/install-system

demo: setup system
	$(PY) -m slabkit demo

test: setup system
	$(PY) -m pytest -ra $(PYTEST_ARGS)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup system
	$(PY) -m bench

test-kernels: setup system
	$(PY) -m pytest -ra tests/kernels $(PYTEST_ARGS)

# SystemTap for real on the Debian 6.1 guest: builds a compile root (debootstrap, headers,
# the 859 MB debug vmlinux; cached in tests/kernels/cache), ~5 min the first time.
test-stap: setup system
	$(PY) -m pytest -ra tests/kernels/test_guest_stap.py $(PYTEST_ARGS)
