"""
Django's state in a child, used before any checkout: a cursor held across
the fork, ensure_connection() then the raw connection, the pool's
close_pool(), atomic() entered inside an inherited block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from django_forksafe.hazards import SESSION_SQL, Fork, child_report, fork_child, run_child, session_id
from tests.hazards.common import Result, parent_of, setup
from tests.hazards.pools import check_pool_after, fill_pool


def _server_session_or_rows(cursor: Any, vendor: str) -> Any:
    cursor.execute(SESSION_SQL.get(vendor, "SELECT v FROM forksafe_probe"))
    return cursor.fetchone()[0]


def held_cursor(fork: Fork) -> Callable[[str, str], Result]:
    """The child goes on inside `with connection.cursor() as cursor:`, opened
    by the parent, and executes on it: an error is acceptable, the parent's
    session (or SQLite handle) never."""

    def scenario(vendor: str, engine: str) -> Result:
        from django.db import connection

        monitor = setup(vendor, engine)
        parent = parent_of(monitor)
        parent.before_fork()
        with connection.cursor() as cursor:

            def work() -> Result:
                observations: Result = {"held_cursor_error": None, "held_cursor_answer": None}
                try:
                    observations["held_cursor_answer"] = _server_session_or_rows(cursor, vendor)
                except Exception as exc:
                    observations["held_cursor_error"] = f"{type(exc).__name__}: {exc}"
                observations["child_touched_inherited"] = parent.child_touched_inherited()
                observations["child_session"] = session_id()  # Then its own.
                return observations

            result = run_child(work, fork)
        return {**result, **parent.check()}

    return scenario


def held_server_side_cursor(fork: Fork) -> Callable[[str, str], Result]:
    """PostgreSQL: the parent is part way through a server-side cursor
    (QuerySet.iterator(), chunked_cursor()) when it forks, and the child
    fetches on from it: an error is acceptable; rows from the parent's
    session never, and the parent's next rows stay the parent's."""

    def scenario(vendor: str, engine: str) -> Result:
        from django.db import connection

        monitor = setup(vendor, engine)
        parent = parent_of(monitor)
        cursor = connection.chunked_cursor()
        cursor.execute("SELECT generate_series(1, 100)")
        first = [row[0] for row in cursor.fetchmany(10)]

        def work() -> Result:
            observations: Result = {"child_rows": None, "child_fetch_error": None}
            try:
                observations["child_rows"] = [row[0] for row in cursor.fetchmany(10)]
            except Exception as exc:
                observations["child_fetch_error"] = f"{type(exc).__name__}: {exc}"
            return observations

        result = run_child(work, fork)
        result["parent_first_rows"] = first
        result["parent_next_rows"] = [row[0] for row in cursor.fetchmany(10)]
        cursor.close()
        return {**result, **parent.check()}

    return scenario


def ensure_connection_then_raw(fork: Fork) -> Callable[[str, str], Result]:
    """connection.ensure_connection(), then connection.connection used
    directly (LISTEN/NOTIFY, raw psycopg): a session of the child's own."""

    def scenario(vendor: str, engine: str) -> Result:
        monitor = setup(vendor, engine)
        parent = parent_of(monitor)

        def work() -> Result:
            from django.db import connection

            connection.ensure_connection()
            raw_cursor = connection.connection.cursor()
            try:
                raw_cursor.execute(SESSION_SQL[vendor])
                return {"raw_session": int(raw_cursor.fetchone()[0])}
            finally:
                raw_cursor.close()

        return {**run_child(work, fork), **parent.check()}

    return scenario


def close_pool(fork: Fork) -> Callable[[str, str], Result]:
    """With Django's PostgreSQL pool holding idle sessions, the child runs
    connections.close_all() and then the wrapper's close_pool(): the
    parent's pooled sessions must all still be there and usable."""

    def scenario(vendor: str, engine: str) -> Result:
        from django.db import connection

        monitor = setup(vendor, engine, DATABASES=_pooled(vendor, engine))
        assert monitor is not None
        result: Result = {"parent_pool": fill_pool()}

        def work() -> Result:
            from django.db import connections

            connections.close_all()
            connection.close_pool()  # type: ignore[attr-defined]
            return {"child_session": session_id()}

        result.update(run_child(work, fork))
        check_pool_after(result, monitor)
        return result

    return scenario


def _pooled(vendor: str, engine: str, **pool_options: Any) -> dict[str, Any]:
    """Django's pool, as many connections as fill_pool() holds at once."""
    from tests import dbconfig
    from tests.hazards.pools import POOL_SIZE

    options = {"min_size": POOL_SIZE, "max_size": POOL_SIZE, "timeout": 10, **pool_options}
    return {"default": dbconfig.database(vendor, engine, OPTIONS={"pool": options})}


def atomic_in_child(fork: Fork) -> Callable[[str, str], Result]:
    """The parent forks inside atomic(); the child, still inside the inherited
    block, enters atomic() of its own: a block that rolls back leaves
    nothing, one that commits runs its on_commit callback, and neither is
    a savepoint of the parent's transaction (which the parent rolls back)."""

    def scenario(vendor: str, engine: str) -> Result:
        from django.db import connection, transaction

        monitor = setup(vendor, engine)
        table = f"forksafe_child_atomic_{os.getpid()}"
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {table} (v INTEGER)")

        def insert(value: int) -> None:
            with connection.cursor() as cursor:
                cursor.execute(f"INSERT INTO {table} VALUES ({value})")

        def work() -> Result:
            observations: Result = {"child_rollback_error": None, "child_commit_error": None}
            on_commit_ran: list[int] = []
            try:
                with transaction.atomic():
                    insert(7)
                    transaction.set_rollback(True)
            except Exception as exc:
                observations["child_rollback_error"] = f"{type(exc).__name__}: {exc}"
            try:
                with transaction.atomic():
                    insert(8)
                    transaction.on_commit(lambda: on_commit_ran.append(8))
            except Exception as exc:
                observations["child_commit_error"] = f"{type(exc).__name__}: {exc}"
            observations["child_on_commit_ran"] = on_commit_ran
            return observations

        with transaction.atomic():
            insert(1)
            result = child_report(*fork_child(work, fork))
            transaction.set_rollback(True)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT v FROM {table} ORDER BY v")
            result["committed"] = [row[0] for row in cursor.fetchall()]
        if monitor is not None:
            result["committed_on_server"] = sorted(row[0] for row in monitor.query(f"SELECT v FROM {table}"))
        return result

    return scenario
