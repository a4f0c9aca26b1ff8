"""Enqueue shop.tasks.huey_record tasks for a running Huey consumer, wait
for their results (--timeout seconds for them all) and print them as JSON."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.tasks import huey_record


class Command(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run")
        parser.add_argument("--tasks", type=int, default=20)
        parser.add_argument("--timeout", type=float, default=30)

    def handle(self, *args: Any, **options: Any) -> None:
        results = [huey_record(options["run"], n) for n in range(options["tasks"])]
        deadline = time.monotonic() + options["timeout"]
        outcomes = []
        for result in results:
            try:
                outcomes.append(result.get(blocking=True, timeout=max(deadline - time.monotonic(), 0.1)))
            except Exception as exc:
                outcomes.append({"error": f"{type(exc).__name__}: {exc}"})
        self.stdout.write(json.dumps(outcomes))
