# make demo: forksafe_check on testproject/, plain ENGINE vs forksafe ENGINE.
# make test: the test suite, on the oldest and the newest supported versions.

PYTHON ?= python3
VENV := .venv
# Let tox find every installed CPython, pyenv's included (after PATH, so
# that python3 stays the default one).
PYENV_BINS := $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.*/bin)
empty :=
space := $(empty) $(empty)
export PATH := $(PATH)$(if $(PYENV_BINS),:$(subst $(space),:,$(PYENV_BINS)))
TEST_ENVS ?= py311-django52,py313-django61,py312-django52-psycopg2,spatialite,mypy

.PHONY: demo test tox benchmark clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

$(VENV)/.demo: $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -e . 'psycopg[binary]'
	@# mysqlclient compiles against libmariadb-dev: MariaDB is shown only if it builds.
	$(VENV)/bin/pip install --quiet mysqlclient || echo "mysqlclient did not build: skipping MariaDB"
	touch $@

$(VENV)/bin/tox: $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet tox

demo: $(VENV)/.demo
	$(VENV)/bin/python testproject/demo.py

test: $(VENV)/bin/tox
	$(VENV)/bin/tox run -e $(TEST_ENVS)

tox: $(VENV)/bin/tox
	$(VENV)/bin/tox run

benchmark: $(VENV)/.demo
	$(VENV)/bin/pip install --quiet gunicorn pytest
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m tests.benchmarks.overhead

clean:
	rm -rf $(VENV) .tox build dist *.egg-info testproject/db.sqlite3
