# peerlink: `make demo` runs it, `make test` tests it.  Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR := .demo

# mypy (strict) checks both programs; ruff lints and checks the format of all the Python.
TYPED := rendezvous webpeer
LINTED := rendezvous webpeer tests bench scripts hatch_build.py

.PHONY: demo test check typecheck bench system-deps venv clean

# Keep compiled bytecode (and pytest's rewritten test modules) between runs
# and across the processes a test starts, even where the environment says
# PYTHONDONTWRITEBYTECODE=1: without it every run compiles every module
# again, about 7 s of make check's collection alone.
export PYTHONDONTWRITEBYTECODE =

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# The server's compiled fast path (rendezvous/_fastpath.c): pip install -e
# builds it in place the first time; this rebuilds it when the C source
# changes.  Without a C compiler it stays unbuilt and the Python path runs.
FASTPATH := rendezvous/libfastpath.so

$(FASTPATH): rendezvous/_fastpath.c hatch_build.py | $(STAMP)
	-$(PY) hatch_build.py

# Debian packages the tests use (coturn for STUN interop, redis-server for the
# Redis registry); installed when root.
system-deps:
	@bash scripts/system-deps.sh

# Types and lint first: a failure there stops `make test` before the long run.
typecheck: $(STAMP) $(FASTPATH)
	$(VENV)/bin/mypy $(TYPED)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

# The fast loop (about half a minute): types, lint, format and the unit tests
# but the few marked slow (the long fuzz runs, the 250-message group); make
# test runs those too.  The unit tests run in two workers, a file to each
# (their fixtures take free ports and tmp dirs): 1,209 took 42 s one by one
# and 29.6 s in two on this 2-core machine.
check: typecheck
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests/unit

# The loopback integration and browser tests mostly wait (for child processes,
# Chromium, timers): together they use under 3 min of CPU, so they run in two
# pytest-xdist workers, a whole file to a worker (--dist loadfile: a file's
# fixtures and order stay as written).  On 2 cores nearly idle (load 1-4):
# tests/integration 244 s one by one, 134 s in two workers, all 121 passing
# (at load 8-12 with tests/browser too: 408 s against 352 s).  The unit
# tests lose (46 s alone, 113 s in two workers: they are CPU-bound), so they,
# interop, js and the NAT lab (it times what it measures) run after, one by
# one.  Both runs always run; either failing fails the target.
PARALLEL_TESTS := tests/integration tests/browser

test: $(STAMP) typecheck system-deps
	status=0; \
	$(PY) -m pytest -q -n 2 --dist loadfile $(PARALLEL_TESTS) || status=$$?; \
	$(PY) -m pytest -q $(addprefix --ignore=,$(PARALLEL_TESTS)) || status=$$?; \
	exit $$status

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP) system-deps
	$(PY) bench/run_bench.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench/build bench/out .pytest_cache .hypothesis
