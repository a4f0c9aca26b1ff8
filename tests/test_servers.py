"""
End to end: the real programs that fork Django apps (gunicorn, uWSGI, a
Celery prefork worker, a process pool in a management command) running
testproject/ against real servers, each with a plain-ENGINE control where the
failure is deterministic.
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
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import IMPORT_PATH, dbconfig
from tests.hazards import Monitor
from tests.test_hazards import ROOT

PROJECT = ROOT / "testproject"
# Which products the load asks for: printed in pytest's header, and set by
# FORKSAFE_SEED to replay a run.
SEED = int(os.environ.get("FORKSAFE_SEED") or random.SystemRandom().randrange(2**32))
RANDOM = random.Random(SEED)
PRODUCTS = 200
SERVERS = pytest.mark.parametrize("vendor", dbconfig.SERVER_VENDORS)


def require(*needs: str) -> None:
    """Skip (fail in CI) when a server or program the test needs is missing."""
    for need in needs:
        if need in dbconfig.SERVER_VENDORS:
            reason = dbconfig.unreachable_reason(need)
        elif need == "redis":
            try:
                socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
                reason = None
            except OSError as exc:
                reason = f"Redis not reachable at 127.0.0.1:6379 ({exc})"
        else:
            reason = None if shutil.which(need, path=bin_path()) else f"{need} is not installed"
        if reason is not None:
            if dbconfig.in_ci():
                pytest.fail(reason)
            pytest.skip(reason)


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
        **extra,
    }


def manage(vendor: str, engine: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    process = subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), *args],
        env=project_env(vendor, engine, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    return process


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
            return {"asked": pk, "error": f"{type(exc).__name__}: {exc}"}

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
        # Nothing but headers ("Exception ignored in: ..."): two workers'
        # output interleaved; the body follows in a block of its own, judged there.
        if not all(line.startswith("Exception ignored in:") for line in block.splitlines() if line.strip())
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


@SERVERS
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_preload(vendor: str, worker_class: str, tmp_path: Path) -> None:
    require(vendor, "gunicorn")
    prepare(vendor)
    port, report = free_port(), tmp_path / "master.json"
    env = project_env(vendor, "forksafe", FORKSAFE_CONN_MAX_AGE="600", FORKSAFE_REPORT=str(report))
    with running(gunicorn_command(port, worker_class), env, port, tmp_path / "gunicorn.log"):
        responses = hammer(port)
        assert_master_kept_session(vendor, report)
    assert_all_right(responses)
    assert len({r["pid"] for r in responses}) > 3  # Workers were recycled.
    assert unexpected_tracebacks(tmp_path / "gunicorn.log") == []


@SERVERS
def test_control_gunicorn_preload(vendor: str, tmp_path: Path) -> None:
    require(vendor, "gunicorn")
    prepare(vendor)
    port = free_port()
    env = project_env(vendor, "plain", FORKSAFE_CONN_MAX_AGE="600")
    with running(gunicorn_command(port, "sync"), env, port, tmp_path / "gunicorn.log"):
        responses = hammer(port)
    assert wrong(responses) or shared_sessions(responses)


def uwsgi_command(port: int) -> list[str]:
    # No lazy-apps: the app (and its connection) is loaded in the master, and
    # uWSGI does not run Python's at-fork handlers in the workers.
    return [
        "uwsgi", "--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "3",
        "--module", "testproject.wsgi:application", "--max-requests", "100", "--min-worker-lifetime", "0",
        "--die-on-term", "--need-app", "--disable-logging", "--enable-threads",
    ]


@SERVERS
def test_uwsgi(vendor: str, tmp_path: Path) -> None:
    require(vendor, "uwsgi")
    prepare(vendor)
    port, report = free_port(), tmp_path / "master.json"
    env = project_env(vendor, "forksafe", FORKSAFE_CONN_MAX_AGE="600", FORKSAFE_REPORT=str(report))
    with running(uwsgi_command(port), env, port, tmp_path / "uwsgi.log"):
        responses = hammer(port)
        assert_master_kept_session(vendor, report)
        check_ids = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/checks/").read())["ids"]
    assert "django_forksafe.W002" not in check_ids
    assert_all_right(responses)
    assert len({r["pid"] for r in responses}) > 3  # Workers were recycled.
    assert unexpected_tracebacks(tmp_path / "uwsgi.log") == []


@pytest.mark.parametrize("app", ["1", "0"])
def test_uwsgi_without_importing_the_hook(app: str, tmp_path: Path) -> None:
    """wsgi.py does not import the hook: with the app installed, system check
    W002 says so; with or without the app, inherited connections are still
    invalidated at each worker's first checkout."""
    require("postgresql", "uwsgi")
    prepare("postgresql")
    port = free_port()
    env = project_env(
        "postgresql", "forksafe", FORKSAFE_CONN_MAX_AGE="600", FORKSAFE_UWSGI_HOOK="0", FORKSAFE_APP=app
    )
    with running(uwsgi_command(port), env, port, tmp_path / "uwsgi.log"):
        responses = hammer(port)
        check_ids = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/checks/").read())["ids"]
    assert ("django_forksafe.W002" in check_ids) == (app == "1")
    assert_all_right(responses)
    assert unexpected_tracebacks(tmp_path / "uwsgi.log") == []


@SERVERS
def test_control_uwsgi(vendor: str, tmp_path: Path) -> None:
    require(vendor, "uwsgi")
    prepare(vendor)
    port = free_port()
    env = project_env(vendor, "plain", FORKSAFE_CONN_MAX_AGE="600")
    with running(uwsgi_command(port), env, port, tmp_path / "uwsgi.log"):
        responses = hammer(port)
    assert wrong(responses) or shared_sessions(responses)


@SERVERS
def test_celery_prefork_worker(vendor: str, tmp_path: Path) -> None:
    require(vendor, "redis", "celery")
    from celery import Celery

    prepare(vendor)
    broker = "redis://127.0.0.1:6379/15"
    queue = f"forksafe-{os.getpid()}-{vendor}"
    report = tmp_path / "main.json"
    env = project_env(vendor, "forksafe", FORKSAFE_CELERY_BROKER=broker, FORKSAFE_REPORT=str(report))
    command = [
        "celery", "-A", "testproject.celery", "worker", "--pool", "prefork", "--concurrency", "3",
        "--queues", queue, "--without-heartbeat", "--without-gossip", "--without-mingle",
        "--max-tasks-per-child", "20", "--loglevel", "INFO",
    ]
    client = Celery(broker=broker, backend=broker)
    with running(command, env, None, tmp_path / "celery.log") as worker:
        pks = [RANDOM.randint(1, PRODUCTS) for _ in range(150)]
        results = [client.send_task("shop.tasks.product_info", args=[pk], queue=queue) for pk in pks]
        outcomes = [{"asked": pk, **result.get(timeout=120)} for pk, result in zip(pks, results, strict=True)]
        stop(worker)  # Warm shutdown: the main process checks its session.
    client.close()
    assert_all_right(outcomes)
    assert len({outcome["pid"] for outcome in outcomes}) > 3  # Children were replaced.
    assert unexpected_tracebacks(tmp_path / "celery.log") == []
    main = json.loads(report.read_text())
    assert "error_at_shutdown" not in main, main
    assert main["session_at_shutdown"] == main["session"]


@SERVERS
@pytest.mark.parametrize("pool", ["futures", "multiprocessing"])
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("close_in_initializer", [False, True])
def test_process_pool_in_management_command(
    vendor: str, pool: str, start_method: str, close_in_initializer: bool
) -> None:
    require(vendor)
    prepare(vendor)
    monitor = Monitor(vendor)
    try:
        before = monitor.sessions()
        args = ["fanout", "--json", "--pool", pool, "--start-method", start_method, "--products", str(PRODUCTS)]
        report = json.loads(
            manage(vendor, "forksafe", *args, *(["--close-in-initializer"] if close_in_initializer else [])).stdout
        )
        left_behind = monitor.new_sessions(before)
    finally:
        monitor.conn.close()
    assert report["parent_error"] is None
    assert report["worker_errors"] == []
    assert report["total"] == report["expected_total"] == PRODUCTS * (PRODUCTS + 1) // 2
    assert report["parent_session_after"] == report["parent_session_before"]
    assert report["workers_on_parent_session"] == 0
    assert report["workers_used_inherited_connection"] == 0
    assert left_behind == set()


@SERVERS
def test_control_process_pool_in_management_command(vendor: str) -> None:
    require(vendor)
    prepare(vendor)
    report = json.loads(manage(vendor, "plain", "fanout", "--json", "--close-in-initializer").stdout)
    assert report["parent_error"] is not None
