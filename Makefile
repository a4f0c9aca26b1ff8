# make demo: forksafe_check on testproject/, plain ENGINE vs forksafe ENGINE,
# on SQLite first (no server), then MariaDB and PostgreSQL.
# make test: the test suite on the tox environments TEST_ENVS names (below):
# the newest Python and Django with everything (in a Debian chroot where this
# machine lacks them), the oldest without the real programs and third-party
# backends, psycopg2, SpatiaLite, types and lint; not Django 6.0 (by name).
# make benchmark: docs/performance.rst's figures.
# make test and make benchmark set up what they need first (see
# tests/machine/setup.sh).

PYTHON ?= python3
VENV := .venv
# Let tox find every installed CPython, pyenv's and uv's included (after
# PATH, so that python3 stays the default one).
PYENV_BINS := $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.*/bin)
UV_BINS := $(wildcard $(or $(UV_PYTHON_INSTALL_DIR),$(HOME)/.local/share/uv/python)/cpython-3.*/bin)
empty :=
space := $(empty) $(empty)
export PATH := $(PATH)$(if $(PYENV_BINS)$(UV_BINS),:$(subst $(space),:,$(strip $(PYENV_BINS) $(UV_BINS))))
# The newest stack with everything (CPython 3.14, Django 6.1, PostgreSQL 18,
# MariaDB 11.8: this machine's own if it has them all, py314-django61, else
# the forky environment, a Debian chroot built once: tests/machine/forky.sh,
# which outside CI skips it with a message where it cannot be had), the
# oldest Python without the real programs (half the time), psycopg2,
# SpatiaLite, the type and lint checks. py313-django61 (the newest on the
# host's servers) and the rest of tox.ini run by name: TEST_ENVS=... make test.
# NEWEST_ENV is asked once, on first use.
NEWEST_ENV ?= $(eval NEWEST_ENV := $$(shell bash tests/machine/forky.sh env))$(NEWEST_ENV)
TEST_ENVS ?= $(NEWEST_ENV),py310-django52-core,py312-django52-psycopg2,spatialite,unit,mypy,lint

.PHONY: demo test unit tox benchmark benchmark-host clean machine forky
PIP := $(VENV)/bin/pip --quiet --disable-pip-version-check --no-input

# System packages, database servers, the test role and databases (see the script).
machine:
	@bash tests/machine/setup.sh

# The newest stack's chroot, built once (a few minutes) where this machine
# lacks CPython 3.14 and the newest servers; reused after.
forky:
	@case ",$(TEST_ENVS)," in *,forky,*) bash tests/machine/forky.sh build ;; esac

# Debian's python3 makes virtualenvs only with python3-venv.
$(VENV)/bin/python:
	@echo "--- virtualenv in $(VENV)"
	@$(PYTHON) -m venv $(VENV) >/dev/null 2>&1 || { rm -rf $(VENV); bash tests/machine/setup.sh venv && $(PYTHON) -m venv $(VENV); }
	$(PIP) install --upgrade pip

$(VENV)/.demo: $(VENV)/bin/python
	@echo "--- installing django-forksafe and psycopg"
	$(PIP) install . 'psycopg[binary]'
	touch $@

$(VENV)/bin/tox: $(VENV)/bin/python
	$(PIP) install tox

# SQLite first: no server, no driver. Then what MariaDB and PostgreSQL need,
# best effort (setup.sh demo, and mysqlclient built if it can be): whatever
# is missing is skipped, with the line that adds it.
demo: $(VENV)/.demo
	@$(VENV)/bin/python testproject/demo.py sqlite3
	@bash tests/machine/setup.sh demo
	@$(PIP) install 'mysqlclient>=2.2.1' >/dev/null 2>&1 || true
	@$(VENV)/bin/python testproject/demo.py mysql postgresql

# Two environments at a time, the longest first: each works in a database of
# its own (tests/dbconfig.py) and mostly waits for its children and servers.
# The environments whose Python is not found are named at the end (with
# CI=true they must all run: tests/machine/interpreters.py).
test: machine forky $(VENV)/bin/tox
	@envs="$$($(VENV)/bin/python tests/machine/interpreters.py select '$(TEST_ENVS)')" && \
	status=0 && $(VENV)/bin/tox run-parallel -p 2 --parallel-no-spinner -q -e "$$envs" || status=$$?; \
	$(VENV)/bin/python tests/machine/interpreters.py report '$(TEST_ENVS)'; exit $$status

# The pure functions and the tripwires on Django: no server, seconds.
unit: $(VENV)/bin/tox
	$(VENV)/bin/tox run -q -e unit

tox: machine $(VENV)/bin/tox
	$(VENV)/bin/tox run -q

# docs/performance.rst's figures: on this machine's Python, then on the newest
# stack's (CPython 3.14: this machine's, else in the forky chroot). Run from a
# directory that holds only the tests (tests.IMPORT_PATH), so that the
# installed django_forksafe, with its C extension, is measured, not the
# source tree. valgrind counts instructions (installed here on Debian as
# root; else those lines say they were skipped).
BENCHMARK_ROUNDS ?= 9
BENCHMARK_GUNICORN_ROUNDS ?= 3
BENCHMARK_ARGS = --rounds $(BENCHMARK_ROUNDS) --gunicorn-rounds $(BENCHMARK_GUNICORN_ROUNDS)
benchmark: machine forky
	@command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; } \
		|| echo "--- valgrind is not installed: the instruction counts will say skipped"
	@$(MAKE) --no-print-directory benchmark-host
	@if [ "$(NEWEST_ENV)" = forky ]; then bash tests/machine/forky.sh benchmark $(BENCHMARK_ARGS); \
	else $(MAKE) --no-print-directory benchmark-host PYTHON=python3.14 VENV=.venv314; fi

# The benchmark on PYTHON in VENV, here.
benchmark-host: $(VENV)/.demo
	$(PIP) install gunicorn pytest pylibmc pymemcache
	@$(PIP) install 'mysqlclient>=2.2.1' || echo "--- mysqlclient did not build: MariaDB left out (make machine installs its build)"
	$(PIP) install --no-deps --force-reinstall .  # The code as it is now.
	cd "$$($(VENV)/bin/python -c 'import tests; print(tests.IMPORT_PATH)')" \
		&& PATH=$(CURDIR)/$(VENV)/bin:$$PATH PYTHONUNBUFFERED=1 $(CURDIR)/$(VENV)/bin/python -m tests.benchmarks.overhead $(BENCHMARK_ARGS)

clean:
	rm -rf $(VENV) .tox build dist *.egg-info testproject/db.sqlite3
