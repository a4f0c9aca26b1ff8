"""RQ jobs (enqueued by dotted path: shop.jobs.record)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from shop import events


def record(run: str, n: int) -> dict[str, Any]:
    return events.record(run, "job", n)


def stuck(run: str, n: int) -> None:
    """Write a row inside atomic(), then hang in a slow query (10 s) until the job's
    job_timeout kills it: the row must go with it."""
    with transaction.atomic():
        events.record(run, "stuck", n)
        events.wait_on_server(10)
