# slabkit: the two commands a newcomer needs are `sudo make demo` and `sudo make test`.
# Each does its own set-up: the Debian packages the tracers need, a mounted tracefs and
# slabkit's capture helper for normal users (`make system`, root: .ci/install-system), and a
# virtualenv with the Python deps. Run through sudo, the checkout stays the user's: the
# virtualenv is made as SUDO_USER with a Python every user can run, so `make lab` as yourself
# works right after.
SHELL := /bin/bash
# The system's python3, not one under root's home: the user must be able to run the venv.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slabkit-installed
ROOT := $(filter 0,$(shell id -u))
AS_USER := $(if $(and $(ROOT),$(SUDO_USER)),runuser -u $(SUDO_USER) --,)

.PHONY: demo test lab bench setup system test-kernels test-stap

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -x $(PY) ] && ! $(AS_USER) $(PY) -c 'import sys' 2>/dev/null; then \
	  echo "setup: $(VENV) was made with a Python $${SUDO_USER:-this user} cannot run; making it again" >&2; \
	  rm -rf $(VENV); fi
	@test -x $(PY) || $(AS_USER) $(PYTHON) -m venv $(VENV)
	$(AS_USER) $(PY) -m pip install -q --upgrade pip
	$(AS_USER) $(PY) -m pip install -q -e '.[test]'
	@$(AS_USER) touch $(STAMP)

# Debian packages for the tracers and tests, tracefs, and slabkit's capture helper (root);
# a no-op with a message when not root. ADD_USER=1 also lets SUDO_USER capture.
system:
	@ADD_USER="$(ADD_USER)" bash .ci/install-system

demo: system setup
	$(PY) -m slabkit demo

test: system setup
	$(PY) -m pytest -ra $(PYTEST_ARGS)

# JupyterLab runs as you (it refuses root): through sudo it starts as SUDO_USER.
lab: setup
	@if [ -n "$(ROOT)" ]; then \
	  if [ -n "$(SUDO_USER)" ]; then exec runuser -u "$(SUDO_USER)" -- $(VENV)/bin/jupyter lab notebooks/; fi; \
	  echo "make lab: JupyterLab runs as you, not as root: run 'make lab' as your own user" >&2; exit 2; fi
	$(VENV)/bin/jupyter lab notebooks/

bench: system setup
	$(PY) -m bench

test-kernels: system setup
	$(PY) -m pytest -ra tests/kernels $(PYTEST_ARGS)

# SystemTap for real on the Debian 6.1 guest: builds a compile root (debootstrap, headers,
# the 859 MB debug vmlinux; cached in tests/kernels/cache), ~5 min the first time.
test-stap: system setup
	$(PY) -m pytest -ra tests/kernels/test_guest_stap.py $(PYTEST_ARGS)
