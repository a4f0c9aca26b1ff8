"""
manage.py forksafe_check: fork real children against each configured
database and report, hazard by hazard, whether the parent kept its session;
and against each memcached cache, whether every process read its own values
and the parent kept its connection.
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
from django_forksafe.backends import suggest_engine, why_not_loaded
from django_forksafe.checks import memcached_caches
from django_forksafe.hazards import CACHE_HAZARDS, HAZARDS
from django_forksafe.wrapper import ForkSafeMixin

# Distinct from CommandError's 1 (bad arguments, unknown alias, an ENGINE
# that cannot be loaded).
EXIT_HAZARD_OPEN = 3
EXIT_UNREACHABLE = 4


class Command(BaseCommand):
    help = (
        "Fork real children against each database and report, hazard by hazard, "
        "whether the parent kept its server session. Exit status 3 when a hazard "
        "is open, 4 when a database cannot be reached, 1 when an ENGINE cannot be loaded."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database", action="append", dest="databases", metavar="ALIAS",
            help="A database alias to check (repeatable). Default: all of them.",
        )
        parser.add_argument(
            "--cache", action="append", dest="caches", metavar="ALIAS",
            help="A memcached cache alias to check (repeatable). Default: all of them, "
            "unless --database is given.",
        )
        parser.add_argument("--format", choices=["table", "json"], default="table")
        parser.add_argument(
            "--timeout", type=float, default=20.0, help="Seconds allowed for each hazard (default 20)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        named_caches = options["caches"] or []
        aliases = options["databases"] or ([] if named_caches else list(connections))
        unknown = [alias for alias in aliases if alias not in connections]
        if unknown:
            raise CommandError(f"Unknown database alias {unknown[0]!r}. Configured: {', '.join(connections)}.")
        configured_caches = memcached_caches()
        cache_aliases = named_caches or ([] if options["databases"] else list(configured_caches))
        unknown = [alias for alias in cache_aliases if alias not in configured_caches]
        if unknown:
            raise CommandError(
                f"Unknown memcached cache alias {unknown[0]!r}. Configured: {', '.join(configured_caches) or 'none'}."
            )
        results = [self.check_alias(alias, options["timeout"]) for alias in aliases]
        results += [self.check_cache(alias, *configured_caches[alias], options["timeout"]) for alias in cache_aliases]
        if self.progress_shown:
            self.stderr.write("\r\033[K", ending="")
        if options["format"] == "json":
            self.stdout.write(json.dumps(results, indent=2))
        else:
            self.write_table(results)
        misconfigured = [result["alias"] for result in results if result.get("misconfigured")]
        if misconfigured:
            raise CommandError(f"The ENGINE of {', '.join(misconfigured)} cannot be loaded.")
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
        result: dict[str, Any] = {
            "alias": alias, "engine": engine, "forksafe": False, "fork_detection": detection.METHOD, "hazards": []
        }
        try:
            wrapper = connections[alias]
        except Exception as exc:  # The settings' fault, not the server's.
            result.update(reachable=False, misconfigured=True, error=why_not_loaded(exc))
            return result
        result["forksafe"] = isinstance(wrapper, ForkSafeMixin)
        is_in_memory_db = getattr(wrapper, "is_in_memory_db", None)  # SQLite's.
        if callable(is_in_memory_db) and is_in_memory_db():
            # Nothing to share: every child works on a private copy of it.
            result.update(reachable=True, in_memory=True)
            return result
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

    def check_cache(self, alias: str, backend: str, backend_class: type, timeout: float) -> dict[str, Any]:
        from django_forksafe.cache import ForkSafeMemcachedMixin

        result: dict[str, Any] = {
            "alias": alias, "kind": "cache", "engine": backend, "fork_detection": detection.METHOD, "hazards": []
        }
        result["forksafe"] = issubclass(backend_class, ForkSafeMemcachedMixin)
        self.progress(f"cache {alias}: connecting...")
        reachable = self.probe(alias, "reachable", timeout, cache=True)
        result["reachable"] = reachable["safe"]
        if not reachable["safe"]:
            result["error"] = reachable["detail"]
            return result
        for number, hazard in enumerate(CACHE_HAZARDS, 1):
            self.progress(f"cache {alias}: [{number}/{len(CACHE_HAZARDS)}] {hazard}...")
            result["hazards"].append({"hazard": hazard, **self.probe(alias, hazard, timeout, cache=True)})
        return result

    def probe(self, alias: str, hazard: str, timeout: float, cache: bool = False) -> dict[str, Any]:
        """Run one hazard in a fresh process, so that a broken session or a
        hung child cannot touch this one."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path or os.curdir for path in sys.path)}
        process = subprocess.Popen(
            [sys.executable, "-m", "django_forksafe.probe", *(["--cache"] if cache else []), alias, hazard],
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
        width = max(len(hazard) for hazard in [*HAZARDS, *CACHE_HAZARDS])
        self.stdout.write(f"Fork detection: {detection.METHOD} ({detection.DESCRIPTION[detection.METHOD]})")
        self.stdout.write(f"Mechanism: {detection.MECHANISM}")
        for result in results:
            cache = result.get("kind") == "cache"
            heading = f"{'cache ' if cache else ''}{result['alias']}  ({result['engine']})"
            self.stdout.write(self.style.MIGRATE_HEADING(heading))
            if result.get("misconfigured"):
                self.stdout.write(f"  {self.style.ERROR('ENGINE NOT LOADED')}  {result['error']}")
                continue
            if not result["reachable"]:
                self.stdout.write(f"  {self.style.ERROR('UNREACHABLE')}  {result['error']}")
                continue
            if result.get("in_memory"):
                self.stdout.write(
                    "  in memory: nothing to check; every child works on a private copy of the database"
                )
                continue
            for hazard in result["hazards"]:
                status = self.style.SUCCESS("safe") if hazard["safe"] else self.style.ERROR("OPEN")
                self.stdout.write(f"  {hazard['hazard']:<{width}}  {status}  {hazard['detail']}")
            if not result["forksafe"] and cache:
                from django_forksafe.cache import suggest_backend

                suggestion = suggest_backend(result["engine"])
                self.stdout.write(f"  -> use BACKEND = {suggestion!r} to close these hazards")
            elif not result["forksafe"]:
                suggestion = suggest_engine(result["engine"])
                self.stdout.write(f"  -> use ENGINE = {suggestion!r} to close these hazards")
