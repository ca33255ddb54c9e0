# goldenhour — the two commands a fresh Debian machine needs:
#   make snapshot   set up, then capture this host into the local store
#   make test       set up (with test tools), then run the whole suite
SHELL := /bin/bash
PY_SYS  ?= /usr/bin/python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
GH      := $(VENV)/bin/goldenhour
INCIDENT ?= manual-$(shell date -u +%Y%m%dT%H%M%SZ)
PROFILE ?= quick
PYTEST_ARGS ?=

.PHONY: help setup setup-test host-deps host-deps-test kernel-headers snapshot test bench install deb lint clean

help:
	@echo "make snapshot   capture this host (PROFILE=quick|standard|full, INCIDENT=ID)"
	@echo "make test       install what is missing and run the whole test suite"
	@echo "make lint       ruff over the whole tree (make test runs it first)"
	@echo "make bench      run the benchmarks, write bench/results.json and bench/README.md"
	@echo "make install    install the systemd unit, config example and directories"
	@echo "make deb        build dist/goldenhour_<version>_<arch>.deb, the package for production hosts"

host-deps:
	@scripts/setup-host.sh runtime

host-deps-test:
	@scripts/setup-host.sh test

kernel-headers: host-deps

# The venv is made from Debian's python3 and sees its dist-packages, where bcc lives.
$(VENV)/.stamp-base: pyproject.toml
	@test -x $(PY) || $(PY_SYS) -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
	@$(PY) -m pip install -q --disable-pip-version-check -e . >/dev/null 2>&1 || $(PY) -m pip install -e .
	@touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base pyproject.toml
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' >/dev/null 2>&1 || $(PY) -m pip install -e '.[test]'
	@touch $@

setup: host-deps $(VENV)/.stamp-base

setup-test: host-deps-test $(VENV)/.stamp-test

snapshot: setup
	@$(GH) snapshot --incident "$(INCIDENT)" --profile $(PROFILE)

test: setup-test lint
	@$(PY) -m pytest $(PYTEST_ARGS)

# ruff, configured in pyproject.toml: errors and likely bugs (not formatting)
lint: setup-test
	@$(VENV)/bin/ruff check .

bench: setup-test
	@$(PY) bench/run.py

install: setup
	@scripts/install.sh

# The Debian package for production hosts (packaging/deb/build.py): its own venv under /opt/goldenhour,
# built in a temporary directory from Debian's python3 (needs python3-venv and PyPI), not from .venv.
deb:
	@$(PY_SYS) packaging/deb/build.py --out dist --lintian

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
