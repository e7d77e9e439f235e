# Two entry points for a fresh machine with only Python 3.11+, gcc and make:
#   make demo   - set up a virtualenv, build the C core, run the crash-surviving demo
#   make test   - set up the same virtualenv and run the test suite
#   make compare - aurora-log side by side with SQLite-based queues and the disk's fsync rate,
#                  then on PostgreSQL beside procrastinate, PgQueuer and a plain SKIP LOCKED
#                  table (a throwaway server; skipped with a line if PostgreSQL is missing)
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-all lint bench compare soak clean

venv: $(STAMP)

# Reinstall whenever the build inputs change (the C core is compiled by pip).
$(STAMP): pyproject.toml setup.py $(wildcard native/*.c native/*.h native/*.py)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: venv
	$(BIN)/python -m aurora_log.tools.demo

test: venv
	$(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check aurora_log tests bench examples
	$(BIN)/mypy

test-all: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python -m pytest bench/ -q --benchmark-only

compare: venv
	$(BIN)/python -m pip install -q -r bench/requirements.txt
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/compare_pg.py

soak: venv
	$(BIN)/python bench/soak.py all

clean:
	rm -rf $(VENV) build dist *.egg-info aurora_log/local/_native*.so aurora_log/local/_gilkept*.so \
	      aurora_log/local/_native.c
