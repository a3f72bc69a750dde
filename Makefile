# Otus — developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CACHE ?= $(CURDIR)/.cache
IMAGE ?= ghcr.io/firestige/otus
HELM ?= $(CACHE)/bin/helm
export OTUS_CACHE := $(CACHE)

APT_PACKAGES := tshark tcpdump sip-tester prometheus iproute2 libpcap0.8 tcpreplay etcd-server openssl \
	openjdk-17-jre-headless maven

.PHONY: help venv deps system-deps demo test lint unit bench e2e image manifests crds clean

help:
	@echo "make demo       create the virtualenv, install, run otus on the example capture"
	@echo "make test       install what the tests need, lint, run the test suite"
	@echo "make bench      print packets/second for the hot paths"
	@echo "make e2e        end-to-end suite on a real API server, Kafka and network namespaces"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

deps: venv

# Debian packages the tests use as independent references; installed only when root and missing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing) >/tmp/otus-apt.log 2>&1 \
	      || { tail -20 /tmp/otus-apt.log; exit 1; }; \
	  else echo "warning: missing Debian packages:$$missing (tests that need them will skip)"; fi; \
	fi

demo: venv
	$(VENV)/bin/otus run -r examples/sipp-uac-uas.pcap --format text

lint: venv
	$(VENV)/bin/ruff check otus operator tests e2e bench tools charts
	$(VENV)/bin/ruff format --check otus operator tests e2e bench tools charts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The real API server and helm some unit tests use are built here, outside pytest's per-test timeout.
unit: venv
	bash e2e/infra/build.sh all
	$(VENV)/bin/pytest

test: system-deps venv lint unit

# The interpreter build matters (a PGO/LTO CPython is 1.4-1.7x faster than a plain build):
# when Debian's python3.11 is present, the offline cases run on it too, from its own venv.
SYSTEM_PYTHON ?= /usr/bin/python3.11
SYSVENV := $(CACHE)/venv-system

bench: venv
	$(PY) -m bench
	@if [ -x $(SYSTEM_PYTHON) ] && [ "$$(readlink -f $(SYSTEM_PYTHON))" != "$$(readlink -f $(PY))" ]; then \
	  test -x $(SYSVENV)/bin/python || $(SYSTEM_PYTHON) -m venv $(SYSVENV); \
	  $(SYSVENV)/bin/pip install -q -e . >/dev/null && $(SYSVENV)/bin/python -m bench offline; \
	fi

e2e: system-deps venv
	@start=$$(date +%s); \
	bash e2e/infra/build.sh all && $(VENV)/bin/pytest e2e -v; rc=$$?; \
	echo "e2e: done in $$(( $$(date +%s) - start ))s"; exit $$rc

image:
	docker build -t $(IMAGE):$$($(PY) -c 'import otus; print(otus.__version__)') .

crds: venv
	$(PY) -m otus.control.kubernetes.crd crds charts/otus/crds

manifests: venv crds
	bash e2e/infra/build.sh helm
	$(PY) charts/manifests.py --helm $(HELM)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
