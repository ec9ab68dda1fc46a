# cpkgs: `make demo` and `make test` work on a fresh machine (they install what they need).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := bash zsh ksh dash tcsh lmod strace util-linux chromium chromium-driver rsyslog
DEMO_ROOT := $(CURDIR)/demo-site

.PHONY: venv sysdeps lint test test-fast demo bench clean channel conda-client

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages for the real shells, Lmod, strace, the catalog's browser test and rsyslog (the usage tests' collector); only when root and missing.
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (run as root or install them)"; fi; \
	fi

channel: venv
	$(VPY) tests/channel/build_channel.py

# A real user's conda 26.7.1 for the tests (tests/conda_client/build_conda.py; needs the channel's python).
conda-client: channel
	$(VPY) tests/conda_client/build_conda.py

lint: venv
	$(VENV)/bin/ruff check cpkgs_admin tests bench
	$(VENV)/bin/mypy

test: venv sysdeps lint
	$(VPY) tests/channel/build_channel.py >/dev/null
	$(VPY) tests/conda_client/build_conda.py >/dev/null
	$(VPY) tests/wheelhouse/build_wheelhouse.py >/dev/null
	$(VPY) -m pytest -q -p no:cacheprovider --durations=15

test-fast: venv
	$(VPY) -m pytest -q -x -m "not slow"

# Real NFS: nfs-ganesha on 127.0.0.1 + two QEMU (TCG) guests with their own kernels mounting one export (nfs/).
NFS_APT_PACKAGES := nfs-ganesha nfs-ganesha-vfs qemu-system-x86 busybox-static cpio kmod strace
.PHONY: test-nfs
test-nfs: venv
	@missing=""; for p in $(NFS_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	  else echo "test-nfs: missing Debian packages:$$missing (run as root)"; exit 1; fi; \
	fi
	python3 nfs/harness.py

demo: venv sysdeps
	bash ./demo.sh "$(DEMO_ROOT)"

bench: venv sysdeps
	for b in bench/bench_*.py; do $(VPY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-site .pytest_cache .mypy_cache .ruff_cache
