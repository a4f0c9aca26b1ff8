# make demo: forksafe_check on testproject/, plain ENGINE vs forksafe ENGINE.
# make test: the test suite, on the oldest and the newest supported versions.
# Both set up what they need first (see tests/machine/setup.sh).

PYTHON ?= python3
VENV := .venv
# Let tox find every installed CPython, pyenv's included (after PATH, so
# that python3 stays the default one).
PYENV_BINS := $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.*/bin)
empty :=
space := $(empty) $(empty)
export PATH := $(PATH)$(if $(PYENV_BINS),:$(subst $(space),:,$(PYENV_BINS)))
# The newest versions with everything, the oldest Python without the real
# programs (half the time), psycopg2, SpatiaLite, the type and lint checks.
TEST_ENVS ?= py313-django61,py310-django52-core,py312-django52-psycopg2,spatialite,unit,mypy,lint

.PHONY: demo test unit tox benchmark clean machine
PIP := $(VENV)/bin/pip --quiet --disable-pip-version-check --no-input

# System packages, database servers and test databases (see the script).
machine:
	@bash tests/machine/setup.sh

$(VENV)/bin/python:
	@echo "--- virtualenv in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.demo: $(VENV)/bin/python
	@echo "--- installing django-forksafe and the drivers"
	$(PIP) install . 'psycopg[binary]' 2>&1 | grep -v -i warning || true
	@# mysqlclient compiles against libmariadb-dev: MariaDB is shown only if it builds.
	$(PIP) install mysqlclient || echo "mysqlclient did not build: skipping MariaDB"
	touch $@

$(VENV)/bin/tox: $(VENV)/bin/python
	$(PIP) install tox

demo: machine $(VENV)/.demo
	$(VENV)/bin/python testproject/demo.py

# Two environments at a time, the longest first: each works in a database of
# its own (tests/dbconfig.py) and mostly waits for its children and servers.
test: machine $(VENV)/bin/tox
	$(VENV)/bin/tox run-parallel -p 2 --parallel-no-spinner -q -e $(TEST_ENVS)

# The pure functions and the tripwires on Django: no server, seconds.
unit: $(VENV)/bin/tox
	$(VENV)/bin/tox run -q -e unit

tox: machine $(VENV)/bin/tox
	$(VENV)/bin/tox run -q

benchmark: $(VENV)/.demo
	$(VENV)/bin/pip install --quiet gunicorn pytest
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m tests.benchmarks.overhead

clean:
	rm -rf $(VENV) .tox build dist *.egg-info testproject/db.sqlite3
