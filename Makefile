# make demo: forksafe_check on testproject/, plain ENGINE vs forksafe ENGINE,
# on SQLite first (no server), then MariaDB and PostgreSQL.
# make test: the test suite, on the oldest and the newest supported versions.
# Both set up what they need first (see tests/machine/setup.sh).

PYTHON ?= python3
VENV := .venv
# Let tox find every installed CPython, pyenv's and uv's included (after
# PATH, so that python3 stays the default one).
PYENV_BINS := $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.*/bin)
UV_BINS := $(wildcard $(or $(UV_PYTHON_INSTALL_DIR),$(HOME)/.local/share/uv/python)/cpython-3.*/bin)
empty :=
space := $(empty) $(empty)
export PATH := $(PATH)$(if $(PYENV_BINS)$(UV_BINS),:$(subst $(space),:,$(strip $(PYENV_BINS) $(UV_BINS))))
# The newest versions with everything, the oldest Python without the real
# programs (half the time), psycopg2, SpatiaLite, the type and lint checks.
TEST_ENVS ?= py313-django61,py310-django52-core,py312-django52-psycopg2,spatialite,unit,mypy,lint

.PHONY: demo test unit tox benchmark clean machine
PIP := $(VENV)/bin/pip --quiet --disable-pip-version-check --no-input

# System packages, database servers, the test role and databases (see the script).
machine:
	@bash tests/machine/setup.sh

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
test: machine $(VENV)/bin/tox
	@envs="$$($(VENV)/bin/python tests/machine/interpreters.py select '$(TEST_ENVS)')" && \
	status=0 && $(VENV)/bin/tox run-parallel -p 2 --parallel-no-spinner -q -e "$$envs" || status=$$?; \
	$(VENV)/bin/python tests/machine/interpreters.py report '$(TEST_ENVS)'; exit $$status

# The pure functions and the tripwires on Django: no server, seconds.
unit: $(VENV)/bin/tox
	$(VENV)/bin/tox run -q -e unit

tox: machine $(VENV)/bin/tox
	$(VENV)/bin/tox run -q

benchmark: $(VENV)/.demo
	$(PIP) install gunicorn pytest
	@$(PIP) install 'mysqlclient>=2.2.1' || echo "--- mysqlclient did not build: MariaDB left out (make machine installs its build)"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m tests.benchmarks.overhead

clean:
	rm -rf $(VENV) .tox build dist *.egg-info testproject/db.sqlite3
