"""Enqueue shop.qtasks.record tasks for a running django-q2 cluster (its
ORM broker), wait for their results (--timeout seconds for them all) and
print them as JSON, in order."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django_q.models import Task
from django_q.tasks import async_task


class Command(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run")
        parser.add_argument("--tasks", type=int, default=20)
        parser.add_argument("--timeout", type=float, default=60)

    def handle(self, *args: Any, **options: Any) -> None:
        ids = [async_task("shop.qtasks.record", options["run"], n) for n in range(options["tasks"])]
        deadline = time.monotonic() + options["timeout"]
        while Task.objects.filter(id__in=ids).count() < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)  # Polling the cluster's results, bounded by the deadline.
        done = {task.id: task for task in Task.objects.filter(id__in=ids)}
        outcomes = []
        for task_id in ids:
            task = done.get(task_id)
            if task is None:
                outcomes.append({"error": "no result"})
            elif task.success:
                outcomes.append(task.result)
            else:
                outcomes.append({"error": str(task.result)})
        self.stdout.write(json.dumps(outcomes))
