"""Bad input gets a clear error that names the problem and the fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.backends.sqlite3 import base as sqlite3_base
from django.db.utils import load_backend

from django_forksafe import ForkSafeMixin, forksafe
from tests import IMPORT_PATH
from tests.programs import with_engines


def test_unknown_engine_lists_available_engines() -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        load_backend("django_forksafe.backends.nosuch")
    assert "Check the above exception" in str(excinfo.value)
    message = str(excinfo.value.__cause__)  # "The above exception".
    assert "'django_forksafe.backends.nosuch' is not a django-forksafe ENGINE" in message
    for vendor in ("mysql", "postgresql", "sqlite3"):
        assert f"'django_forksafe.backends.{vendor}'" in message
    assert "forksafe()" in message


@pytest.mark.parametrize("package", ["django_forksafe.backends", "django_forksafe.backends.gis"])
def test_the_package_given_as_engine_is_named_as_such(package: str) -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        load_backend(package)
    assert f"{package!r} is not a django-forksafe ENGINE" in str(excinfo.value.__cause__)


def test_system_check_names_an_engine_of_ours_that_cannot_be_loaded() -> None:
    # Before the first query: manage.py check says what Django would say then.
    process = with_engines(
        {"default": "django_forksafe.backends.nosuch", "other": "some_other.nosuch"},
        "from django_forksafe.checks import check_engines\n"
        "for message in check_engines():\n    print(message.id, message.obj, message.msg)\n",
    )
    (line,) = process.stdout.splitlines() or [process.stderr]
    assert line.startswith(
        "django_forksafe.W005 default Database 'default' uses ENGINE 'django_forksafe.backends.nosuch', "
        "which cannot be loaded: 'django_forksafe.backends.nosuch' is not a django-forksafe ENGINE. "
        "Available ENGINEs: 'django_forksafe.backends.mysql'"
    ), line


def test_unknown_names_are_missing_modules_to_importlib() -> None:
    import importlib.util

    from django.utils.module_loading import module_has_submodule

    import django_forksafe.backends

    with pytest.raises(ModuleNotFoundError):
        importlib.util.find_spec("django_forksafe.backends.nosuch")
    assert not module_has_submodule(django_forksafe.backends, "nosuch")
    assert module_has_submodule(django_forksafe.backends, "mysql")
    assert importlib.util.find_spec("some_other_package_entirely") is None


def test_known_engines_load() -> None:
    for vendor in ("mysql", "postgresql", "sqlite3"):
        backend = load_backend(f"django_forksafe.backends.{vendor}")
        assert issubclass(backend.DatabaseWrapper, ForkSafeMixin)
        assert backend.DatabaseWrapper.__module__ == f"django_forksafe.backends.{vendor}.base"


@pytest.mark.parametrize(
    "value",
    [connections, sqlite3_base.DatabaseWrapper.__init__, object, int, "django.db.backends.mysql", None],
)
def test_forksafe_rejects_non_wrapper_classes(value: object) -> None:
    with pytest.raises(TypeError) as excinfo:
        forksafe(value)  # type: ignore[type-var]
    assert "forksafe() takes a database wrapper class" in str(excinfo.value)
    assert repr(value) in str(excinfo.value)


def test_forksafe_is_idempotent() -> None:
    wrapped = forksafe(sqlite3_base.DatabaseWrapper)
    assert forksafe(wrapped) is wrapped
    assert wrapped.__name__ == "DatabaseWrapper"
    assert wrapped.__module__ == __name__


@pytest.mark.parametrize("driver, vendor", [("MySQLdb", "mysql"), ("psycopg", "postgresql")])
def test_missing_driver_gives_djangos_message(driver: str, vendor: str) -> None:
    """Import each ENGINE with its driver hidden: the error must be Django's own."""
    hide = f"import sys; sys.modules[{driver!r}] = None; sys.modules['psycopg2'] = None; "

    def import_error(module: str) -> str:
        process = subprocess.run(
            [sys.executable, "-c", hide + f"import {module}"],
            capture_output=True,
            text=True,
            cwd=IMPORT_PATH,
            env={**os.environ, "PYTHONPATH": IMPORT_PATH},
            timeout=60,
        )
        assert process.returncode != 0
        return process.stderr[process.stderr.rindex("django.core.exceptions.") :]

    ours = import_error(f"django_forksafe.backends.{vendor}.base")
    assert ours == import_error(f"django.db.backends.{vendor}.base")
    assert ours.startswith("django.core.exceptions.ImproperlyConfigured: Error loading")


def test_importing_our_modules_registers_no_checks() -> None:
    """System checks are registered by the app's ready() alone: importing the
    backends, the checks or the uWSGI hook (tests.settings leaves the app
    out) registers nothing."""
    from django.core.checks import registry

    import django_forksafe.checks
    import django_forksafe.contrib.uwsgi
    import django_forksafe.contrib.uwsgi_detection  # noqa: F401

    registered = registry.registry.registered_checks
    assert not [check for check in registered if check.__module__.startswith("django_forksafe")]
