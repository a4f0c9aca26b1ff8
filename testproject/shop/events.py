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


def wait_on_server(seconds: float) -> None:
    """A slow query."""
    with connection.cursor() as cursor:
        cursor.execute(SLEEP_SQL[connection.vendor], [seconds])
