"""The forksafe ENGINEs change nothing else about Django."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import close_old_connections, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend

from django_forksafe import ForkSafeMixin, registry
from django_forksafe.hazards import SESSION_SQL
from tests import IMPORT_PATH, dbconfig
from tests.hazards import Monitor
from tests.testapp.models import Item

ALIASES = ["default", *dbconfig.SERVER_VENDORS]


@pytest.fixture(params=ALIASES)
def alias(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in settings.DATABASES:
        pytest.skip(dbconfig.unreachable_reason(name) or f"{name} not configured")
    return name


def plain_wrapper(alias: str) -> BaseDatabaseWrapper:
    """Django's own wrapper for the same database."""
    engine = connections[alias].settings_dict["ENGINE"]
    backend = load_backend(engine.replace("django_forksafe.backends", "django.db.backends"))
    return backend.DatabaseWrapper(connections[alias].settings_dict.copy(), alias)  # type: ignore[no-any-return]


def names(alias: str) -> list[str]:
    return sorted(Item.objects.using(alias).values_list("name", flat=True))


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_wrapper_is_django_wrapper(alias: str) -> None:
    connection = connections[alias]
    plain = plain_wrapper(alias)
    assert isinstance(connection, ForkSafeMixin)
    assert isinstance(connection, type(plain))
    assert connection.vendor == plain.vendor
    assert connection.display_name == plain.display_name
    assert type(connection).features_class is type(plain).features_class


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_test_database_created_and_migrated(alias: str) -> None:
    connection = connections[alias]
    if connection.vendor != "sqlite":
        assert connection.settings_dict["NAME"].startswith("test_")
    assert "testapp_item" in connection.introspection.table_names()
    call_command("migrate", "testapp", "zero", database=alias, verbosity=0)
    assert "testapp_item" not in connection.introspection.table_names()
    call_command("migrate", "testapp", database=alias, verbosity=0)
    assert "testapp_item" in connection.introspection.table_names()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_transactions_and_savepoints(alias: str) -> None:
    with transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="outer")
        try:
            with transaction.atomic(using=alias):
                Item.objects.using(alias).create(name="inner")
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
        savepoint = getattr(transaction, "savepoint_create", transaction.savepoint)  # Django 6.1 renamed it.
        sid = savepoint(using=alias)
        Item.objects.using(alias).create(name="manual")
        transaction.savepoint_rollback(sid, using=alias)
    assert names(alias) == ["outer"]
    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        Item.objects.using(alias).create(name="rolled back")
        raise RuntimeError
    assert names(alias) == ["outer"]


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_on_commit(alias: str) -> None:
    ran: list[str] = []
    with transaction.atomic(using=alias):
        transaction.on_commit(lambda: ran.append("committed"), using=alias)
        assert ran == []
    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        transaction.on_commit(lambda: ran.append("rolled back"), using=alias)
        raise RuntimeError
    transaction.on_commit(lambda: ran.append("autocommit"), using=alias)
    assert ran == ["committed", "autocommit"]


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_execute_wrapper(alias: str) -> None:
    seen: list[str] = []
    connections[alias].ensure_connection()  # MySQL configures a new session through cursors.

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(wrapper):
        Item.objects.using(alias).create(name="x")
    assert len(seen) == 1 and "INSERT" in seen[0]


@pytest.mark.django_db(transaction=True, databases="__all__")
@pytest.mark.parametrize("max_age, kept", [(0, False), (600, True), (None, True)])
def test_conn_max_age(alias: str, max_age: int | None, kept: bool) -> None:
    connection = connections[alias]
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = max_age
    try:
        connection.ensure_connection()
        raw = connection.connection
        close_old_connections()
        assert (connection.connection is raw) is kept
        assert (id(raw) in registry._open_connections) is kept
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = 0


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_conn_health_checks_replace_a_killed_session(alias: str) -> None:
    connection = connections[alias]
    if connection.vendor == "sqlite":
        pytest.skip("no server session to kill")
    connection.close()
    connection.settings_dict.update(CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=True)
    monitor = Monitor(connection.vendor)
    try:
        with connection.cursor() as cursor:
            cursor.execute(SESSION_SQL[connection.vendor])
            session = cursor.fetchone()[0]
        kill = "KILL %s" if connection.vendor == "mysql" else "SELECT pg_terminate_backend(%s)"
        monitor.query(kill, (session,))
        close_old_connections()  # What a request does at its start.
        with connection.cursor() as cursor:
            cursor.execute(SESSION_SQL[connection.vendor])
            assert cursor.fetchone()[0] != session
    finally:
        monitor.conn.close()
        connection.close()
        connection.settings_dict.update(CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=False)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_close_forgets_connection(alias: str) -> None:
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    if connection.vendor != "sqlite":
        assert id(raw) in registry._open_connections
    connection.close()
    assert id(raw) not in registry._open_connections


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_inspectdb(alias: str) -> None:
    out = StringIO()
    call_command("inspectdb", "testapp_item", database=alias, stdout=out)
    assert "class TestappItem(models.Model):" in out.getvalue()
    assert "name = models.CharField(max_length=100)" in out.getvalue()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_dbshell(alias: str) -> None:
    connection = connections[alias]
    plain = plain_wrapper(alias)
    args = connection.client.settings_to_cmd_args_env(connection.settings_dict, [])
    assert args == plain.client.settings_to_cmd_args_env(plain.settings_dict, [])
    executable = connection.client.executable_name
    if connection.vendor == "sqlite" or executable is None or shutil.which(executable) is None:
        return
    flag = "-e" if connection.vendor == "mysql" else "-c"
    process = subprocess.run(
        [sys.executable, "-m", "django", "dbshell", "--database", alias, "--", flag, "SELECT 4321"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=IMPORT_PATH,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": IMPORT_PATH},
    )
    assert "4321" in process.stdout, process.stderr


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_connect_over_an_open_connection_forgets_the_old_one(alias: str) -> None:
    connection = connections[alias]
    connection.ensure_connection()
    old = connection.connection
    connection.connect()  # Django leaves the old one to the garbage collector.
    try:
        assert id(old) not in registry._open_connections
        assert id(connection.connection) in registry._open_connections
    finally:
        old.close()


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_mock_of_djangos_ensure_connection_applies(alias: str) -> None:
    """As in Django's own test_utils: a mock patched over
    BaseDatabaseWrapper.ensure_connection is called (unbound, as Django's
    wrappers would call it) when a query needs a connection."""
    connection = connections[alias]
    real_ensure_connection = connection.ensure_connection
    connection.close()
    calls = []

    def counted_ensure_connection() -> None:
        calls.append(connection.connection is None)
        real_ensure_connection()

    with mock.patch.object(BaseDatabaseWrapper, "ensure_connection", side_effect=counted_ensure_connection):
        assert names(alias) == []
    assert calls == [True]
