"""
manage.py forksafe_check: fork real children against each configured
database and report, hazard by hazard, whether the parent kept its session.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_forksafe import detection
from django_forksafe.backends import suggest_engine
from django_forksafe.hazards import HAZARDS
from django_forksafe.wrapper import ForkSafeMixin

# Distinct from CommandError's 1 (bad arguments, unknown alias).
EXIT_HAZARD_OPEN = 3
EXIT_UNREACHABLE = 4


class Command(BaseCommand):
    help = (
        "Fork real children against each database and report, hazard by hazard, "
        "whether the parent kept its server session. Exit status 3 when a hazard "
        "is open, 4 when a database cannot be reached."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database", action="append", dest="databases", metavar="ALIAS",
            help="A database alias to check (repeatable). Default: all of them.",
        )
        parser.add_argument("--format", choices=["table", "json"], default="table")
        parser.add_argument(
            "--timeout", type=float, default=20.0, help="Seconds allowed for each hazard (default 20)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = options["databases"] or list(connections)
        unknown = [alias for alias in aliases if alias not in connections]
        if unknown:
            raise CommandError(f"Unknown database alias {unknown[0]!r}. Configured: {', '.join(connections)}.")
        results = [self.check_alias(alias, options["timeout"]) for alias in aliases]
        if self.progress_shown:
            self.stderr.write("\r\033[K", ending="")
        if options["format"] == "json":
            self.stdout.write(json.dumps(results, indent=2))
        else:
            self.write_table(results)
        open_aliases = [result["alias"] for result in results if any(not h["safe"] for h in result["hazards"])]
        if open_aliases:
            raise CommandError(f"Fork hazards open on {', '.join(open_aliases)}.", returncode=EXIT_HAZARD_OPEN)
        unreachable = [result["alias"] for result in results if not result["reachable"]]
        if unreachable:
            raise CommandError(f"Could not reach {', '.join(unreachable)}.", returncode=EXIT_UNREACHABLE)

    progress_shown = False

    def progress(self, text: str) -> None:
        if self.stderr.isatty():
            self.stderr.write(f"\r\033[K{text}", ending="")
            self.stderr.flush()
            self.progress_shown = True

    def check_alias(self, alias: str, timeout: float) -> dict[str, Any]:
        engine = connections.settings[alias]["ENGINE"]
        try:
            forksafe = issubclass(connections[alias].__class__, ForkSafeMixin)
        except Exception:  # An ENGINE that cannot even be loaded.
            forksafe = False
        result: dict[str, Any] = {
            "alias": alias, "engine": engine, "forksafe": forksafe, "fork_detection": detection.METHOD, "hazards": []
        }
        self.progress(f"{alias}: connecting...")
        reachable = self.probe(alias, "reachable", timeout)
        result["reachable"] = reachable["safe"]
        if not reachable["safe"]:
            result["error"] = reachable["detail"]
            return result
        for number, hazard in enumerate(HAZARDS, 1):
            self.progress(f"{alias}: [{number}/{len(HAZARDS)}] {hazard}...")
            result["hazards"].append({"hazard": hazard, **self.probe(alias, hazard, timeout)})
        return result

    def probe(self, alias: str, hazard: str, timeout: float) -> dict[str, Any]:
        """Run one hazard in a fresh process, so that a broken session or a
        hung child cannot touch this one."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path or os.curdir for path in sys.path)}
        process = subprocess.Popen(
            [sys.executable, "-m", "django_forksafe.probe", alias, hazard],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # A hazard can hang its processes (replies lost on a shared socket).
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return {"safe": False, "detail": f"hung: no answer within {timeout:g} s"}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # Children it left behind.
        try:
            report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            lines = stderr.strip().splitlines() or ["no output"]
            report = {"safe": False, "detail": f"probe failed: {lines[-1]}"}
        return report

    def write_table(self, results: list[dict[str, Any]]) -> None:
        width = max(len(hazard) for hazard in HAZARDS)
        self.stdout.write(f"Fork detection: {detection.METHOD} ({detection.DESCRIPTION[detection.METHOD]})")
        self.stdout.write(f"Mechanism: {detection.MECHANISM}")
        for result in results:
            self.stdout.write(self.style.MIGRATE_HEADING(f"{result['alias']}  ({result['engine']})"))
            if not result["reachable"]:
                self.stdout.write(f"  {self.style.ERROR('UNREACHABLE')}  {result['error']}")
                continue
            for hazard in result["hazards"]:
                status = self.style.SUCCESS("safe") if hazard["safe"] else self.style.ERROR("OPEN")
                self.stdout.write(f"  {hazard['hazard']:<{width}}  {status}  {hazard['detail']}")
            if not result["forksafe"]:
                suggestion = suggest_engine(result["engine"])
                self.stdout.write(f"  -> use ENGINE = {suggestion!r} to close these hazards")
