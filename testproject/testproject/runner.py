"""
manage.py test --testrunner testproject.runner.SessionCheckingRunner: Django's
DiscoverRunner, on the fork start method, whose main process queries right
before the suite runs (so that --parallel workers fork with its connection
open) and again after the workers are done, and writes both server sessions
(or the error) as JSON to FORKSAFE_REPORT.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from typing import Any

from django.test.runner import DiscoverRunner


class SessionCheckingRunner(DiscoverRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Python 3.14 defaults to forkserver on Linux; the fork is the point.
        multiprocessing.set_start_method("fork", force=True)
        super().__init__(*args, **kwargs)

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        from shop.views import session_id

        report: dict[str, Any] = {
            "pid": os.getpid(),
            "session_before": session_id(),
            "processes": getattr(suite, "processes", 1),
        }
        try:
            return super().run_suite(suite, **kwargs)
        finally:
            try:
                report["session_after"] = session_id()
            except Exception as exc:
                report["error_after"] = f"{type(exc).__name__}: {exc}"
            if path := os.environ.get("FORKSAFE_REPORT"):
                with open(path, "w") as file:
                    json.dump(report, file)
