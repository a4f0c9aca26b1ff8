"""Django's PostgreSQL connection pool in a child."""

from __future__ import annotations

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
