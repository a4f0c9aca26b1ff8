"""
Query, daemonize with python-daemon (two forks, every descriptor >= 3
closed), then write heartbeat rows from the daemon. The daemon writes its
PID to --pidfile first, and a JSON report to --report when it is done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import daemon
from django.core.management.base import BaseCommand, CommandParser

from shop import events


class Command(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run")
        parser.add_argument("--heartbeats", type=int, default=10)
        parser.add_argument("--pidfile", type=Path, required=True)
        parser.add_argument("--report", type=Path, required=True)
        parser.add_argument("--log", type=Path, required=True, help="The daemon's stderr.")

    def handle(self, *args: Any, **options: Any) -> None:
        run = options["run"]
        report: dict[str, Any] = {"before": events.record(run, "before")}
        with open(options["log"], "w") as log, daemon.DaemonContext(
            detach_process=True, working_directory=os.getcwd(), stderr=log
        ):
            options["pidfile"].write_text(str(os.getpid()))
            report.update(pid=os.getpid(), written=0, error=None)
            try:
                for n in range(options["heartbeats"]):
                    events.record(run, "daemon", n)
                    report["written"] += 1
            except Exception as exc:
                report["error"] = f"{type(exc).__name__}: {exc}"
            temporary = options["report"].with_suffix(".tmp")
            temporary.write_text(json.dumps(report))
            temporary.rename(options["report"])
