"""SQLite: an inherited handle is never used or closed; :memory: is a private copy."""

from __future__ import annotations

import django
from django.conf import settings

from django_forksafe.hazards import run_child
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
