"""
Sum product prices in a process pool, the way management commands fan work
out, and report whether the parent kept its database session.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections, connection
from django.db.models import Sum

from shop.models import Product

SESSION_SQL = {"mysql": "SELECT CONNECTION_ID()", "postgresql": "SELECT pg_backend_pid()"}


def session() -> str:
    """The server session this process's connection is on."""
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        return f"handle {id(connection.connection):#x} in {os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(SESSION_SQL[connection.vendor])
        return f"session {cursor.fetchone()[0]}"


def close_connection() -> None:
    """The initializer users habitually write; harmless with the forksafe ENGINE."""
    connection.close()


def price_of(start: int, stop: int) -> dict[str, Any]:
    inherited = connection.connection is not None and os.getpid() != PARENT_PID
    total = Product.objects.filter(pk__gte=start, pk__lt=stop).aggregate(total=Sum("price"))["total"]
    result = {"pid": os.getpid(), "total": total, "used_inherited": inherited, "session": session()}
    close_old_connections()
    return result


PARENT_PID = os.getpid()


class Command(BaseCommand):
    help = "Sum product prices in a process pool and check the parent's session."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workers", type=int, default=4)
        parser.add_argument("--products", type=int, default=200)
        parser.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
        parser.add_argument("--close-in-initializer", action="store_true")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args: Any, **options: Any) -> None:
        global PARENT_PID
        PARENT_PID = os.getpid()
        if Product.objects.count() != options["products"]:
            Product.objects.all().delete()
            Product.objects.bulk_create(
                Product(pk=i, name=f"product {i}", price=i) for i in range(1, options["products"] + 1)
            )
        before = session()
        chunk = 10
        bounds = [(start, start + chunk) for start in range(1, options["products"] + 1, chunk)]
        pool = ProcessPoolExecutor(
            max_workers=options["workers"],
            mp_context=multiprocessing.get_context(options["start_method"]),
            initializer=close_connection if options["close_in_initializer"] else None,
        )
        results, worker_errors = [], []
        with pool:
            for future in [pool.submit(price_of, *bound) for bound in bounds]:
                try:
                    results.append(future.result())
                except Exception as exc:
                    worker_errors.append(f"{type(exc).__name__}: {exc}")
        parent_error = None
        try:
            after = session()
            expected = Product.objects.aggregate(total=Sum("price"))["total"]
        except Exception as exc:
            after, expected, parent_error = None, None, f"{type(exc).__name__}: {exc}"
        report = {
            "engine": connection.settings_dict["ENGINE"],
            "parent_session_before": before,
            "parent_session_after": after,
            "parent_error": parent_error,
            "total": sum(result["total"] for result in results),
            "expected_total": expected,
            "workers_on_parent_session": sum(result["session"] == before for result in results),
            "workers_used_inherited_connection": sum(result["used_inherited"] for result in results),
            "worker_pids": sorted({result["pid"] for result in results}),
            "worker_errors": sorted(set(worker_errors)),
        }
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        for key, value in report.items():
            self.stdout.write(f"{key:>36}: {value}")
