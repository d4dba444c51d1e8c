# meshproxy — the four commands: make demo | make test | make lint | make bench
#
# Every target makes its own virtualenv (.venv), builds the Cython fast path in
# place, and installs the Debian packages it needs when they are missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXT_STAMP := meshproxy/.fastpath-built

# Debian packages by target: what the tests start, what the benchmark compares.
TEST_DEBS := prometheus prometheus-alertmanager redis-server
BENCH_DEBS := wrk haproxy nginx-light

.PHONY: demo test lint bench build clean venv apt-test apt-bench

$(STAMP): pyproject.toml setup.py examples/ab_tagger/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	MESHPROXY_NO_EXTENSIONS=1 $(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps -e examples/ab_tagger  # the example filter: its tests and the entry-point test
	touch $@

venv: $(STAMP)

$(EXT_STAMP): $(STAMP) meshproxy/_fastpath.pyx $(wildcard meshproxy/_fastpath_*.pxi) setup.py
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: $(EXT_STAMP)

# apt-get only when a command is missing, so a prepared machine needs no root.
define need_debs
	@missing=""; for pkg in $(1); do \
	  case $$pkg in redis-server) cmd=redis-server;; nginx-light) cmd=nginx;; *) cmd=$$pkg;; esac; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

apt-test:
	$(call need_debs,$(TEST_DEBS))

apt-bench:
	$(call need_debs,$(BENCH_DEBS))

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy meshproxy control

test: lint apt-test
	$(PY) tests/unit/helm/fetch_helm.py >/dev/null  # a real helm for the chart test
	MESHPROXY_REQUIRE_EXTENSION=1 MESHPROXY_REQUIRE_HELM=1 $(VENV)/bin/pytest -q -p no:cacheprovider --cov=meshproxy --cov=control --cov-report=term:skip-covered tests examples/ab_tagger/tests

demo: build
	$(PY) -m meshproxy.demo $(DEMO_ARGS)

# e.g. make bench BENCH_ARGS='--quick' or BENCH_ARGS='--only haproxy,meshproxy'
bench: build apt-bench
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build meshproxy/_fastpath.c meshproxy/_fastpath*.so $(EXT_STAMP)
