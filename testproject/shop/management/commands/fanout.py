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

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.db.models import Sum

from shop.models import Product
from shop.pool import price_of, session, start_worker


class Command(BaseCommand):
    help = "Sum product prices in a process pool and check the parent's session."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workers", type=int, default=4)
        parser.add_argument("--products", type=int, default=200)
        parser.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
        parser.add_argument(
            "--pool", default="futures", choices=["futures", "multiprocessing"],
            help="concurrent.futures.ProcessPoolExecutor or multiprocessing.Pool",
        )
        parser.add_argument("--close-in-initializer", action="store_true")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("seed", products=options["products"])
        before = session()
        chunk = 10
        bounds = [(start, start + chunk) for start in range(1, options["products"] + 1, chunk)]
        context = multiprocessing.get_context(options["start_method"])
        initargs = (os.getpid(), options["start_method"] != "fork", options["close_in_initializer"])
        results, worker_errors = [], []
        if options["pool"] == "futures":
            executor = ProcessPoolExecutor(
                max_workers=options["workers"], mp_context=context, initializer=start_worker, initargs=initargs
            )
            with executor:
                futures = [executor.submit(price_of, *bound) for bound in bounds]
                for future in futures:
                    try:
                        results.append(future.result())
                    except Exception as exc:
                        worker_errors.append(f"{type(exc).__name__}: {exc}")
        else:
            with context.Pool(options["workers"], initializer=start_worker, initargs=initargs) as pool:
                pending = [pool.apply_async(price_of, bound) for bound in bounds]
                for task in pending:
                    try:
                        results.append(task.get(timeout=120))
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
