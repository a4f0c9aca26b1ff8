"""Django's PostgreSQL connection pool in a child."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from django_forksafe.hazards import run_child, session_id
from tests import dbconfig
from tests.hazards.common import Result, parent_of, setup


def pool(vendor: str, engine: str, warm_up_only: bool = False) -> Result:
    """Django's PostgreSQL connection pool (OPTIONS["pool"]): the parent holds
    a live pool; children use and close connections, repeatedly. With
    `warm_up_only`, the parent only opened the pool (as a master warming up
    would) and never took a connection from it through Django."""
    pool_options = {"min_size": 3, "max_size": 4, "timeout": 5}
    databases = {"default": dbconfig.database("postgresql", engine, OPTIONS={"pool": pool_options})}
    monitor = setup("postgresql", engine, DATABASES=databases)
    assert monitor is not None
    from django.db import connections

    connection: Any = connections["default"]  # With a pool: Django's PostgreSQL wrapper.
    before = monitor.sessions()
    if warm_up_only:
        connection.pool.open(wait=True, timeout=10)
        parent_pool_sessions = monitor.sessions() - before
        children = [run_child(lambda: {"sessions": [session_id(), session_id()]}) for _ in range(3)]
        alive = parent_pool_sessions <= monitor.sessions()
        connection.close_pool()
        return {"children": children, "parent_pool_sessions": sorted(parent_pool_sessions), "parent_pool_alive": alive}
    parent = parent_of(monitor)
    connection.pool.wait(timeout=10)
    parent_pool_sessions = monitor.sessions() - before

    def work() -> Result:
        sessions = []
        for _ in range(3):
            sessions.append(session_id())
            connection.close()  # Back to the child's own pool.
        connections.close_all()
        sessions.append(session_id())
        return {"sessions": sessions}

    children = [run_child(work) for _ in range(5)]
    result = {**parent.check(), "children": children}
    result["parent_pool_alive"] = parent_pool_sessions <= monitor.sessions()
    parent_sessions, errors = set(), []
    for _ in range(8):  # Cycle through the parent's pooled connections.
        connection.close()
        try:
            parent_sessions.add(session_id())
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    result["parent_errors"] = errors
    result["parent_reused_pool"] = parent_sessions <= parent_pool_sessions
    result["parent_pool_sessions"] = sorted(parent_pool_sessions)
    connection.close_pool()
    return result


# Third-party pools: (library, vendor) -> (made fork-safe in a base.py, as is).
THIRD_PARTY_POOLS = {
    ("connpool", "mysql"): ("tests.pool_backends.connpool_mysql", "dj_db_conn_pool.backends.mysql"),
    ("connpool", "postgresql"): ("tests.pool_backends.connpool_postgresql", "dj_db_conn_pool.backends.postgresql"),
    ("geventpool", "postgresql"): (
        "tests.pool_backends.geventpool",
        "django_db_geventpool.backends.postgresql_psycopg3",
    ),
}


def third_party_pool(library: str, child_only_exits: bool = False) -> Callable[[str, str], Result]:
    """The parent's pool holds idle sessions when it forks. The child either
    queries (twice, giving its connection back in between) or only exits
    through interpreter finalisation (which frees the inherited pool)."""

    def scenario(vendor: str, engine: str) -> Result:
        import sys

        from django_forksafe.hazards import child_report, fork_child
        from tests.hazards.common import Monitor

        forksafe_engine, plain_engine = THIRD_PARTY_POOLS[(library, vendor)]
        entry = dbconfig.database(vendor, "plain", ENGINE=forksafe_engine if engine == "forksafe" else plain_engine)
        if library == "connpool":
            entry["POOL_OPTIONS"] = {"POOL_SIZE": 3, "MAX_OVERFLOW": 0}
        else:
            entry["OPTIONS"] = {**entry["OPTIONS"], "MAX_CONNS": 3}
        monitor = setup(vendor, engine, DATABASES={"default": entry})
        assert monitor is not None
        from django.db import connection

        before = monitor.sessions()
        for _ in range(3):  # Used and given back: idle in the pool.
            session_id()
            connection.close()
        parent_pool = monitor.sessions() - before

        def pool_identity() -> int:
            if library == "connpool":
                from dj_db_conn_pool.core import pool_container

                return id(pool_container.get("default"))
            return id(connection._pool)  # type: ignore[attr-defined]

        inherited_pool = pool_identity()
        if child_only_exits:
            monitor.conn.close()  # A driver connection too: see basic.child_exits.
            pid = os.fork()
            if pid == 0:
                sys.exit(0)
            _, status = os.waitpid(pid, 0)
            child: Result = {"child_exit_status": os.waitstatus_to_exitcode(status)}
            monitor = Monitor(vendor)
        else:

            def work() -> Result:
                first = session_id()
                connection.close()
                return {"sessions": [first, session_id()], "fresh_pool": pool_identity() != inherited_pool}

            child = child_report(*fork_child(work))
        result: Result = {**child, "parent_pool": sorted(parent_pool)}
        result["parent_pool_alive"] = parent_pool <= monitor.sessions()
        try:
            result["parent_session_after"] = session_id()
            result["parent_error"] = None
        except Exception as exc:
            result["parent_error"] = f"{type(exc).__name__}: {exc}"
        connection.close()
        return result

    return scenario


def pool_beside_plain_alias(vendor: str, engine: str) -> Result:
    """Django keeps its pools in one class-level dict, shared by every
    PostgreSQL alias, fork-safe or not: a child drops the plain alias's
    inherited pool too, and both aliases get sessions of the child's own."""
    options = {"pool": {"min_size": 2, "max_size": 3, "timeout": 5}}
    databases = {
        "default": dbconfig.database("postgresql", engine, OPTIONS=options),
        "plain": dbconfig.database("postgresql", "plain", OPTIONS=options),
    }
    monitor = setup("postgresql", engine, DATABASES=databases)
    assert monitor is not None
    from django.db import connections

    before = monitor.sessions()
    for alias in databases:
        connection: Any = connections[alias]
        connection.pool.open(wait=True, timeout=10)
        session_id(alias)
        connection.close()
    parent_pools = monitor.sessions() - before
    child = run_child(lambda: {alias: session_id(alias) for alias in databases})
    result: Result = {**child, "parent_pools": sorted(parent_pools)}
    result["parent_pools_alive"] = parent_pools <= monitor.sessions()
    for alias in databases:
        connections[alias].close_pool()  # type: ignore[attr-defined]
    return result
