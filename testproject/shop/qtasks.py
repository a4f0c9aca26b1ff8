"""django-q2 tasks (enqueued by dotted path: shop.qtasks.record)."""

from __future__ import annotations

import os
from typing import Any

from django.db import connection

from shop import events


def record(run: str, n: int) -> dict[str, Any]:
    """Write a row; return it with the worker's parent (the sentinel) and the
    size of the worker's connection pool, if it has one."""
    outcome = events.record(run, "task", n)
    pool = getattr(connection, "pool", None)
    stats = pool.get_stats() if pool is not None else {}
    return {**outcome, "ppid": os.getppid(), "pool_size": stats.get("pool_size"), "pool_min": stats.get("pool_min")}
