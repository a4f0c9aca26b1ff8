"""SQLite: an inherited handle is never used or closed; :memory: is a private copy."""

from __future__ import annotations

import os
from collections.abc import Callable

import django
from django.conf import settings

from django_forksafe.hazards import Fork, run_child
from tests import dbconfig
from tests.hazards.common import Result, setup
from tests.hazards.servers import spatial_query


def sqlite_file(vendor: str, engine: str) -> Result:
    """SQLite's own rule: a handle opened before fork() is never used or
    closed in the child. A trace callback on the parent's handle sees use."""
    setup("sqlite3", engine)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE t (v INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1)")
    raw = connection.connection
    statements: list[str] = []
    raw.set_trace_callback(statements.append)

    def work() -> Result:
        import sqlite3

        seen_before = len(statements)
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO t VALUES (2)")
        connection.close()
        try:
            raw.total_changes  # noqa: B018 - raises if the handle was closed
            inherited_open = True
        except sqlite3.ProgrammingError:
            inherited_open = False
        spatial = spatial_query() if engine.startswith("gis") else None
        return {
            "inherited_handle_used": len(statements) > seen_before,
            "inherited_handle_open": inherited_open,
            "child_spatial": spatial,
        }

    result = run_child(work)
    with connection.cursor() as cursor:
        cursor.execute("SELECT v FROM t ORDER BY v")
        result["parent_rows"] = [row[0] for row in cursor.fetchall()]
    result["parent_same_raw"] = connection.connection is raw
    return result


def sqlite_memory(vendor: str, engine: str) -> Result:
    """An in-memory database: the child keeps a private copy of it."""
    settings.configure(
        DATABASES={"default": dbconfig.database("sqlite3", engine, NAME=":memory:")}, USE_TZ=True
    )
    django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE t (v INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1)")
    raw = connection.connection

    def work() -> Result:
        with connection.cursor() as cursor:
            cursor.execute("SELECT v FROM t")
            seen = [row[0] for row in cursor.fetchall()]
            cursor.execute("INSERT INTO t VALUES (2)")
        connection.close()  # Django keeps in-memory databases open.
        with connection.cursor() as cursor:
            cursor.execute("SELECT v FROM t ORDER BY v")
            after_close = [row[0] for row in cursor.fetchall()]
        return {"child_sees": seen, "child_after_close": after_close}

    result = run_child(work)
    with connection.cursor() as cursor:
        cursor.execute("SELECT v FROM t ORDER BY v")
        result["parent_rows"] = [row[0] for row in cursor.fetchall()]
    result["parent_same_raw"] = connection.connection is raw
    return result


def forked_in_transaction(fork: Fork) -> Callable[[str, str], Result]:
    """The parent forks inside a write transaction (rollback journal), its
    cursor open. The child executes a write on that cursor, on the parent's
    handle: refused, and the parent's transaction and journal are left alone
    (an interrupted write would roll the whole transaction back, from the
    child). Then, on a connection of its own, the child reads, and writes:
    reads work, and the write fails at once with an error that says why
    (SQLite's lock table came along with the inherited handle; a busy wait
    would end in "database is locked")."""

    def scenario(vendor: str, engine: str) -> Result:
        setup("sqlite3", engine)
        from django.db import connection, transaction

        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode = DELETE")
            cursor.execute("CREATE TABLE t (v INTEGER)")
            cursor.execute("INSERT INTO t VALUES (1)")
        journal = f"{connection.settings_dict['NAME']}-journal"

        def work() -> Result:
            observations: Result = {"child_held_cursor_error": None, "child_read": None, "child_write_error": None}
            try:
                held.execute("INSERT INTO t VALUES (9)")
            except Exception as exc:
                observations["child_held_cursor_error"] = f"{type(exc).__name__}: {exc}"
            with connection.cursor() as cursor:
                cursor.execute("SELECT v FROM t WHERE v = 1")
                observations["child_read"] = [row[0] for row in cursor.fetchall()]
            try:
                with connection.cursor() as cursor:
                    cursor.execute("INSERT INTO t VALUES (3)")
            except Exception as exc:
                observations["child_write_error"] = f"{type(exc).__name__}: {exc}"
            return observations

        parent_commit_error = None
        try:
            with transaction.atomic():
                held = connection.cursor()
                held.execute("INSERT INTO t VALUES (2)")
                result = run_child(work, fork)
                result["parent_journal_kept"] = os.path.exists(journal)
        except Exception as exc:
            parent_commit_error = f"{type(exc).__name__}: {exc}"
        result["parent_commit_error"] = parent_commit_error
        with connection.cursor() as cursor:
            cursor.execute("SELECT v FROM t ORDER BY v")
            result["parent_rows"] = [row[0] for row in cursor.fetchall()]
        return result

    return scenario
