"""
Helpers for the end-to-end tests of real programs (gunicorn, uWSGI, Celery,
task runners, management commands) running testproject/ against real
servers: requiring the programs, starting and stopping them, the load they
serve and how it is judged.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import IMPORT_PATH, dbconfig
from tests.hazards import Monitor
from tests.utils import ROOT, skip_or_fail

PROJECT = ROOT / "testproject"
# Which products the load asks for: printed in pytest's header, and set by
# FORKSAFE_SEED to replay a run.
SEED = int(os.environ.get("FORKSAFE_SEED") or random.SystemRandom().randrange(2**32))
RANDOM = random.Random(SEED)
PRODUCTS = 200


def require(*needs: str) -> None:
    """Skip (fail in CI) when a server or program the test needs is missing."""
    for need in needs:
        if need in dbconfig.VENDORS:  # SQLite's is Python's own: no server, no program.
            reason = dbconfig.unreachable_reason(need)
        elif need == "redis":
            try:
                socket.create_connection(("127.0.0.1", dbconfig.REDIS_PORT), timeout=2).close()
                reason = None
            except OSError as exc:
                reason = f"Redis not reachable at 127.0.0.1:{dbconfig.REDIS_PORT} ({exc}); set FORKSAFE_REDIS_PORT"
        else:
            reason = None if shutil.which(need, path=bin_path()) else f"{need} is not installed"
        if reason is not None:
            skip_or_fail(reason)


def bin_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def project_env(vendor: str, engine: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": bin_path(),
        "PYTHONPATH": os.pathsep.join([IMPORT_PATH, str(PROJECT)]),
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "FORKSAFE_DB": vendor,
        "FORKSAFE_ENGINE": engine,
        # The suite's databases: its own on the servers, and a SQLite file
        # of its own (not the one `make demo` leaves in testproject/).
        "FORKSAFE_MYSQL_NAME": dbconfig.server("mysql")["NAME"],
        "FORKSAFE_PG_NAME": dbconfig.server("postgresql")["NAME"],
        "FORKSAFE_SQLITE_NAME": os.path.join(tempfile.gettempdir(), f"forksafe-{dbconfig.test_database()}.sqlite3"),
        **extra,
    }


def manage(
    vendor: str, engine: str, *args: str, check: bool = True, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """testproject's manage.py with `args`, on `vendor` through `engine`, with
    `env` added to project_env()'s; with `check`, it must exit with 0."""
    process = subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), *args],
        env=project_env(vendor, engine, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert process.returncode == 0, process.stderr
    return process


def with_engines(engines: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter, after django.setup() with our app alone
    and one database alias per ENGINE in `engines` (settings testproject's
    models could not import with, such as an ENGINE that cannot be loaded)."""
    databases = {alias: {"ENGINE": engine, "NAME": "x"} for alias, engine in engines.items()}
    setup = (
        "import django\n"
        "from django.conf import settings\n"
        f"settings.configure(INSTALLED_APPS=['django_forksafe'], DATABASES={databases!r})\n"
        "django.setup()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", setup + code],
        env={**os.environ, "PYTHONPATH": IMPORT_PATH}, capture_output=True, text=True, timeout=120,
    )


def prepare(vendor: str) -> None:
    manage(vendor, "forksafe", "migrate", "--verbosity", "0")
    manage(vendor, "forksafe", "seed", "--products", str(PRODUCTS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(
    command: list[str], env: dict[str, str], port: int | None, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a program, wait (bounded) until it listens on `port`, and stop it."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=PROJECT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while port is not None:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{command[0]} did not listen on {port}:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)  # Polling for readiness, bounded by the deadline.
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the main process (it stops its own workers), bounded in time;
    then kill whatever is left of its process group."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def failure(exc: Exception) -> str:
    """A failed request, said in one line. An HTTPError carries the
    response's body, closed here (left to the garbage collector, CPython 3.14
    warns: ResourceWarning, "Implicitly cleaning up <HTTPError 500...>")."""
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
    return f"{type(exc).__name__}: {exc}"


def hammer(
    port: int, requests: int = 400, clients: int = 8, path: str = "/product/{pk}/"
) -> list[dict[str, Any]]:
    """Concurrent requests for random products; each outcome recorded."""

    def fetch(pk: int) -> dict[str, Any]:
        url = f"http://127.0.0.1:{port}{path.format(pk=pk)}"
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                body = json.loads(response.read())
            return {"asked": pk, **body}
        except Exception as exc:
            return {"asked": pk, "error": failure(exc)}

    pks = [RANDOM.randint(1, PRODUCTS) for _ in range(requests)]
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(fetch, pks))


def shared_sessions(responses: list[dict[str, Any]]) -> dict[int, set[int]]:
    """Server sessions that served more than one worker process."""
    pids = defaultdict(set)
    for response in responses:
        if "session" in response:
            pids[response["session"]].add(response["pid"])
    return {session: found for session, found in pids.items() if len(found) > 1}


def wrong(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in responses if r.get("name") != f"product {r['asked']}" or r.get("pk") != r["asked"]]


def assert_all_right(responses: list[dict[str, Any]]) -> None:
    assert wrong(responses) == []
    assert shared_sessions(responses) == {}


def assert_master_kept_session(vendor: str, report: Path) -> None:
    master = json.loads(report.read_text())
    monitor = Monitor(vendor)
    try:
        assert monitor.alive(master["session"])
    finally:
        monitor.conn.close()


def unexpected_tracebacks(log: Path) -> list[str]:
    """Tracebacks in a server's log, but for psycopg's ResourceWarning about
    thread-local connections that Django leaves to the garbage collector when
    a gthread worker exits (the plain ENGINE logs the same, with or without
    --preload)."""
    blocks = log.read_text().split("Traceback (most recent call last):")[1:]
    return [
        block
        for block in blocks
        # Nothing but headers ("Exception ignored in: ...", from CPython 3.14
        # also "Exception ignored while calling deallocator ..."): two workers'
        # output interleaved; the body follows in a block of its own, judged there.
        if not all(line.startswith("Exception ignored ") for line in block.splitlines() if line.strip())
        and "ResourceWarning: <psycopg.Connection object" not in block
        and not ("_connection_base.py" in block and "in __del__" in block)
    ]


def gunicorn_command(port: int, worker_class: str) -> list[str]:
    command = [
        "gunicorn", "testproject.wsgi:application", "--preload", "--workers", "3",
        "--bind", f"127.0.0.1:{port}", "--max-requests", "40", "--max-requests-jitter", "10",
        "--worker-class", worker_class, "--graceful-timeout", "5",
    ]
    return command + (["--threads", "4"] if worker_class == "gthread" else [])


# Task runners: the rows their processes write ------------------------------

DEADLINE = 120.0


def events(vendor: str, run: str) -> dict[str, list[dict[str, int]]]:
    """The rows a run wrote, by source, in order."""
    monitor = Monitor(vendor)
    try:
        rows = monitor.query("SELECT source, n, pid, session FROM shop_event WHERE run = %s ORDER BY id", (run,))
    finally:
        monitor.conn.close()
    found: dict[str, list[dict[str, int]]] = {}
    for source, n, pid, session in rows:
        found.setdefault(source, []).append({"n": int(n), "pid": int(pid), "session": int(session)})
    return found


def poll(check: Callable[[], Any], what: str, seconds: float = DEADLINE) -> Any:
    """Wait, bounded, for an external program: poll until `check()` is truthy."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)  # Polling an external program, bounded by the deadline.
    return result


def new_run(name: str) -> str:
    return f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
