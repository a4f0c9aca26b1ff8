"""
Process-pool workers for the fanout command. Importable before Django is set
up, as spawn and forkserver workers import it from scratch.
"""

from __future__ import annotations

import os
from typing import Any

PARENT_PID = os.getpid()


def start_worker(parent_pid: int, needs_setup: bool, close_connection: bool) -> None:
    global PARENT_PID
    PARENT_PID = parent_pid
    if needs_setup:  # spawn and forkserver start from a fresh interpreter.
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
        django.setup()
    if close_connection:
        # The initializer users habitually write; harmless with forksafe.
        from django.db import connection

        connection.close()


def session() -> str:
    """The server session this process's connection is on."""
    from django.db import connection

    if connection.vendor == "sqlite":
        connection.ensure_connection()
        return f"handle {id(connection.connection):#x} in {os.getpid()}"
    from django_forksafe.hazards import session_id

    return f"session {session_id()}"


def price_of(start: int, stop: int) -> dict[str, Any]:
    from django.db import close_old_connections, connection
    from django.db.models import Sum

    from shop.models import Product

    # The task's query ran on the connection object the worker found there:
    # one it inherited, unless something in this process reset it meanwhile
    # (the first use of Django's state in a child does, before any byte).
    found = connection.connection
    total = Product.objects.filter(pk__gte=start, pk__lt=stop).aggregate(total=Sum("price"))["total"]
    inherited = found is not None and connection.connection is found and os.getpid() != PARENT_PID
    result = {"pid": os.getpid(), "total": total, "used_inherited": inherited, "session": session()}
    close_old_connections()
    return result
