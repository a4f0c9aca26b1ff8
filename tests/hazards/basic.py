"""The basic hazards: what a child does with the connection it inherited."""

from __future__ import annotations

import gc
import os
import tempfile
import threading
from collections.abc import Callable

from django_forksafe import hazards
from django_forksafe.hazards import Parent, own_session, run_child, session_id
from tests import dbconfig
from tests.hazards.common import Monitor, Result, parent_of, setup


def _close(alias: str) -> None:
    from django.db import connections

    connections[alias].close()


def _close_old_connections(alias: str) -> None:
    from django.db import close_old_connections

    close_old_connections()


# What a child does to let go of the connection it inherited: close(),
# close_all() or close_old_connections() (with the default CONN_MAX_AGE=0
# the connection is obsolete, so Django closes it).
CLEANUPS: dict[str, Callable[[str], None]] = {
    "close": _close,
    "close_all": hazards.close_all,
    "close_old_connections": _close_old_connections,
}


def child_cleanup(cleanup: str) -> Callable[[str, str], Result]:
    def scenario(vendor: str, engine: str) -> Result:
        return hazards.child_closes(parent_of(setup(vendor, engine)), CLEANUPS[cleanup])

    return scenario


def child_queries(vendor: str, engine: str) -> Result:
    """The child uses the database: it must get a session of its own."""
    monitor = setup(vendor, engine)
    parent = parent_of(monitor)
    result = run_child(own_session)
    return {**result, **parent.check(), "parent_session": parent.session_id}


def child_drops_connection(vendor: str, engine: str) -> Result:
    """The child lets the connection be garbage-collected: mysqlclient's
    deallocator sends COM_QUIT, psycopg's does not."""
    monitor = setup(vendor, engine)
    parent = parent_of(monitor)

    def work() -> Result:
        from django.db import connections

        del connections["default"]  # The parent's Parent holds no reference either.
        gc.collect()
        return {}

    return {**run_child(work), **parent.check()}


def child_exits(vendor: str, engine: str, fork: hazards.Fork = os.fork) -> Result:
    monitor = setup(vendor, engine)
    parent = hazards.Parent()
    if monitor is not None:
        # The monitor is a plain driver connection: finalisation in the child
        # would end its session too. Another one looks once the child is gone.
        monitor.conn.close()
    result = hazards.child_exits(parent, fork)
    if monitor is not None:
        result["parent_session_on_server"] = Monitor(vendor).alive(parent.session_id)
    return result


def other_thread(vendor: str, engine: str) -> Result:
    monitor = setup(vendor, engine)
    return hazards.other_thread("default", monitor.alive if monitor else None)


def concurrent(vendor: str, engine: str, fork: hazards.Fork = os.fork) -> Result:
    """The parent and 4 children, 300 queries each, at the same time."""
    parent = parent_of(setup(vendor, engine))
    return hazards.concurrent_use(parent, children=4, rounds=300, fork=fork)


def leak_cycles(vendor: str, engine: str) -> Result:
    """50 fork/use/exit cycles; then the server's session count must be back to
    where it started plus the parent's own."""
    monitor = setup(vendor, engine)
    assert monitor is not None
    before = monitor.sessions()
    parent = parent_of(monitor)

    def work() -> Result:
        from django.db import connection

        session = session_id()
        connection.close()
        return {"child_session": session}

    sessions = {run_child(work).get("child_session") for _ in range(50)}
    return {
        "new_sessions": sorted(monitor.new_sessions(before | {parent.session_id})),
        "parent_session": parent.session_id,
        "distinct_child_sessions": len(sessions - {None}),
        **parent.check(),
    }


def thread_dies_unclosed(vendor: str, engine: str) -> Result:
    """No leak in the parent: a thread that opened a connection and ended
    without closing it leaves nothing behind once its wrapper is collected."""
    monitor = setup(vendor, engine)
    assert monitor is not None
    from django_forksafe import registry

    before = monitor.sessions()
    thread_session: list[int] = []
    thread = threading.Thread(target=lambda: thread_session.append(session_id()))
    thread.start()
    thread.join()
    opened = monitor.alive(thread_session[0])
    del thread
    gc.collect()
    return {
        "thread_session_opened": opened,
        "registry_after": len(registry._open_connections),
        "new_sessions": sorted(monitor.new_sessions(before)),
    }


def several_aliases(vendor: str, engine: str) -> Result:
    """MySQL, PostgreSQL and SQLite at once; the child closes them all and
    then uses each with sessions of its own."""
    databases = {
        "default": dbconfig.database("sqlite3", engine, NAME=os.path.join(tempfile.mkdtemp(), "db")),
        "mysql": dbconfig.database("mysql", engine),
        "postgresql": dbconfig.database("postgresql", engine),
        "replica": dbconfig.database("postgresql", engine),
    }
    setup(vendor, engine, DATABASES=databases)
    monitors = {"mysql": Monitor("mysql"), "postgresql": Monitor("postgresql")}
    monitors["replica"] = monitors["postgresql"]
    from django.db import connections

    parents = {alias: Parent(alias, monitors[alias].alive) for alias in ("mysql", "postgresql", "replica")}
    sqlite_raw = connections["default"].connection if connections["default"].cursor() else None

    def work() -> Result:
        connections.close_all()
        return {
            "child_sessions": {alias: session_id(alias) for alias in parents},
            "child_sqlite_reopened": connections["default"].cursor() is not None
            and connections["default"].connection is not sqlite_raw,
        }

    result = run_child(work)
    result["parents"] = {alias: parent.check() for alias, parent in parents.items()}
    result["parent_sessions"] = {alias: parent.session_id for alias, parent in parents.items()}
    return result


def child_closes_raw_connection(vendor: str, engine: str) -> Result:
    """The child closes the driver's connection itself, not through Django,
    before anything else: only the at-fork handler can have silenced it."""
    monitor = setup(vendor, engine)
    parent = parent_of(monitor)
    raw = hazards.connection("default").connection

    def work() -> Result:
        try:
            raw.close()
        except Exception as exc:  # Already closed by the at-fork handler (mysqlclient).
            return {"raw_close_error": f"{type(exc).__name__}: {exc}"}
        return {}

    return {**run_child(work), **parent.check()}
