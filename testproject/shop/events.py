"""Rows that task runners' processes write, each with its process and its
server session, so that tests can check on the server who ran on which
session."""

from __future__ import annotations

import os
from typing import Any

from django.db import connection

from shop.models import Event
from shop.views import session_id

SLEEP_SQL = {"mysql": "SELECT SLEEP(%s)", "postgresql": "SELECT pg_sleep(%s)", "sqlite": "SELECT %s"}


def record(run: str, source: str, n: int = 0) -> dict[str, Any]:
    event = Event.objects.create(run=run, source=source, n=n, pid=os.getpid(), session=session_id())
    return {"pid": event.pid, "session": event.session}


def open_pool() -> None:
    """Open this process's Django connection pool (OPTIONS["pool"]), if it
    has one, and wait (bounded) for its min_size connections: a fork after
    this inherits a pool with idle sessions in it."""
    pool = getattr(connection, "pool", None)
    if pool is not None:
        pool.open(wait=True, timeout=10)


def pooled_sessions() -> list[int]:
    """Borrow min_size connections from this process's Django connection pool
    (give back Django's first), query each, give them back: the sessions
    the pool holds, usable."""
    connection.close()
    pool = connection.pool
    held = []
    try:
        for _ in range(pool.min_size):
            held.append(pool.getconn(timeout=5))
        return [int(raw.execute("SELECT pg_backend_pid()").fetchone()[0]) for raw in held]
    finally:
        for raw in held:
            pool.putconn(raw)


def wait_on_server(seconds: float) -> None:
    """A slow query."""
    with connection.cursor() as cursor:
        cursor.execute(SLEEP_SQL[connection.vendor], [seconds])
