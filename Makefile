# make demo: see the fork hazards and the fix on this machine.
# make test: the test suite, on the oldest and the newest supported versions.

PYTHON ?= python3
VENV := .venv
# Let tox find every installed CPython, pyenv's included (after PATH, so
# that python3 stays the default one).
PYENV_BINS := $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.*/bin)
empty :=
space := $(empty) $(empty)
export PATH := $(PATH)$(if $(PYENV_BINS),:$(subst $(space),:,$(PYENV_BINS)))
TEST_ENVS ?= py311-django52,py313-django61,mypy

.PHONY: demo test tox benchmark clean

$(VENV)/bin/tox:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet tox -e '.[test]'

test: $(VENV)/bin/tox
	$(VENV)/bin/tox run -e $(TEST_ENVS)

tox: $(VENV)/bin/tox
	$(VENV)/bin/tox run

demo: $(VENV)/bin/tox
	$(VENV)/bin/python testproject/demo.py

benchmark: $(VENV)/bin/tox
	$(VENV)/bin/python -m tests.benchmarks.overhead

clean:
	rm -rf $(VENV) .tox build dist *.egg-info testproject/db.sqlite3
