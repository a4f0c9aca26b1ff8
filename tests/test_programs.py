"""
End to end, more programs that fork Django apps, run on testproject/ against
real servers (helpers from tests/programs.py): uWSGI's spooler and mules,
gunicorn --preload with ASGI (uvicorn) workers, and Django's own parallel
test runner; each with a plain-ENGINE control that shows the failure.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import dbconfig
from tests.hazards import Monitor
from tests.programs import (
    assert_all_right,
    assert_master_kept_session,
    free_port,
    hammer,
    manage,
    prepare,
    project_env,
    require,
    running,
    unexpected_tracebacks,
    wrong,
)
from tests.utils import SERVERS, skip_or_fail


def within(seconds: float, condition: Callable[[], Any], what: str, log: Path | None = None) -> Any:
    """Poll `condition` (bounded) until it returns something true; return it."""
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"{what}: not within {seconds:g} s\n{tail}")
        time.sleep(0.1)  # Polling the server, bounded by the deadline.
    return result


# uWSGI's spooler and mules -------------------------------------------------


def uwsgi_jobs_command(port: int, spool: Path) -> list[str]:
    # The spooler and the mule are forked by the master from the process that
    # loaded the app (and its connection), like the workers: no lazy-apps.
    return [
        "uwsgi", "--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "2",
        "--module", "testproject.uwsgi_jobs:application", "--spooler", str(spool),
        "--spooler-frequency", "1", "--mule", "--die-on-term", "--need-app", "--disable-logging",
        "--enable-threads",
    ]


def enqueue(port: int, to: str, n: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/enqueue/?to={to}&n={n}", timeout=20) as response:
        assert response.read() == b"queued\n"


def events(monitor: Monitor, run: str) -> list[dict[str, Any]]:
    rows = monitor.query("SELECT source, n, pid, session FROM shop_event WHERE run = %s", (run,))
    return [dict(zip(("source", "n", "pid", "session"), row, strict=True)) for row in rows]


def wait_for_events(monitor: Monitor, run: str, source: str, count: int, log: Path) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        rows = [e for e in events(monitor, run) if e["source"] == source]
        return rows if len(rows) >= count else None

    return within(60, found, f"{count} {source} rows", log)  # type: ignore[no-any-return]


def uwsgi_checks(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/checks/", timeout=20) as response:
        return json.loads(response.read())["ids"]  # type: ignore[no-any-return]


UWSGI_APPS = pytest.mark.parametrize(
    "style, hook",
    [
        ("decorators", "first"),  # uwsgidecorators imported by the app after us.
        ("decorators", "last"),  # ... before us.
        ("raw", "first"),  # uwsgi.spooler etc. assigned after our import.
        ("raw", "last"),  # ... before it: issue 10, KeyError: 'ud_spool_func'.
        ("decorators", "0"),  # No hook: the first checkout notices the fork.
        ("raw", "0"),
    ],
)


@SERVERS
@UWSGI_APPS
def test_uwsgi_spooler_and_mule(vendor: str, style: str, hook: str, tmp_path: Path) -> None:
    require(vendor, "uwsgi")
    prepare(vendor)
    port, report, log = free_port(), tmp_path / "master.json", tmp_path / "uwsgi.log"
    postfork_log = tmp_path / "postfork"
    run, tasks = f"uwsgi-{uuid.uuid4().hex[:12]}", 5
    (tmp_path / "spool").mkdir()
    env = project_env(
        vendor, "forksafe", FORKSAFE_REPORT=str(report), FORKSAFE_RUN=run, FORKSAFE_UWSGI_STYLE=style,
        FORKSAFE_UWSGI_HOOK=hook, FORKSAFE_POSTFORK_LOG=str(postfork_log),
    )
    with Monitor(vendor) as monitor:
        try:
            with running(uwsgi_jobs_command(port, tmp_path / "spool"), env, port, log):
                enqueue(port, "spooler", tasks)
                enqueue(port, "mule", tasks)
                spooled = wait_for_events(monitor, run, "spooler", tasks, log)
                muled = wait_for_events(monitor, run, "mule", tasks, log)
                assert_master_kept_session(vendor, report)
                check_ids = uwsgi_checks(port)
        finally:
            monitor.query("DELETE FROM shop_event WHERE run = %s", (run,))
    master = json.loads(report.read_text())
    assert sorted(e["n"] for e in spooled) == sorted(e["n"] for e in muled) == list(range(tasks))
    spooler_pids, mule_pids = {e["pid"] for e in spooled}, {e["pid"] for e in muled}
    assert len(spooler_pids) == len(mule_pids) == 1 and spooler_pids != mule_pids
    # Sessions of their own: neither the master's, nor shared by two processes.
    assert master["session"] not in {e["session"] for e in spooled + muled}
    pids_by_session = defaultdict(set)
    for event in spooled + muled:
        pids_by_session[event["session"]].add(event["pid"])
    assert all(len(pids) == 1 for pids in pids_by_session.values()), pids_by_session
    # The app's own post-fork hook ran in the spooler and the mule (and the
    # app's spooler and mule handlers ran, above), whatever the import order.
    post_forked = {int(line) for line in postfork_log.read_text().split()}
    assert spooler_pids | mule_pids <= post_forked
    # The hook is lost only where the app assigned uwsgi.post_fork_hook after
    # our import (the first checkout still notices the fork: see above).
    assert ("django_forksafe.W002" in check_ids) == (hook == "0" or (style, hook) == ("raw", "first"))
    assert unexpected_tracebacks(log) == []


@SERVERS
def test_control_uwsgi_spooler_and_mule(vendor: str, tmp_path: Path) -> None:
    """On the plain ENGINE, the spooler and the mule query on the master's session."""
    require(vendor, "uwsgi")
    prepare(vendor)
    port, report, log = free_port(), tmp_path / "master.json", tmp_path / "uwsgi.log"
    run = f"uwsgi-{uuid.uuid4().hex[:12]}"
    (tmp_path / "spool").mkdir()
    env = project_env(vendor, "plain", FORKSAFE_REPORT=str(report), FORKSAFE_RUN=run)
    with Monitor(vendor) as monitor:
        try:
            with running(uwsgi_jobs_command(port, tmp_path / "spool"), env, port, log):
                # One at a time: on one shared session, concurrent queries interleave.
                enqueue(port, "spooler", 1)
                spooled = wait_for_events(monitor, run, "spooler", 1, log)
                enqueue(port, "mule", 1)
                try:
                    muled = wait_for_events(monitor, run, "mule", 1, log)
                except pytest.fail.Exception:  # The mule hung on the shared session: the hazard itself.
                    muled = []
        finally:
            monitor.query("DELETE FROM shop_event WHERE run = %s", (run,))
    master = json.loads(report.read_text())
    # On the master's session; not necessarily both: the shared session may
    # break under them, or hang the mule (the hazard itself), and Django then
    # reconnects.
    assert master["session"] in {e["session"] for e in spooled + muled}
    assert master["pid"] not in {e["pid"] for e in spooled + muled}


def test_uwsgi_without_master(tmp_path: Path) -> None:
    """Without --master, uwsgidecorators cannot be imported (it raises a plain
    Exception): importing django_forksafe.contrib.uwsgi still works."""
    require("postgresql", "uwsgi")
    prepare("postgresql")
    port, log = free_port(), tmp_path / "uwsgi.log"
    command = [
        "uwsgi", "--http-socket", f"127.0.0.1:{port}", "--processes", "3",
        "--module", "testproject.wsgi:application", "--need-app", "--disable-logging",
    ]
    env = project_env("postgresql", "forksafe", FORKSAFE_CONN_MAX_AGE="600")
    with running(command, env, port, log):
        responses = hammer(port, requests=100)
        check_ids = uwsgi_checks(port)
    assert "django_forksafe.W002" not in check_ids
    assert_all_right(responses)
    assert unexpected_tracebacks(log) == []


# gunicorn --preload with ASGI workers --------------------------------------

ASYNC_PRODUCT = "/async/product/{pk}/"


def gunicorn_asgi_command(port: int) -> list[str]:
    return [
        "gunicorn", "testproject.asgi:application", "--preload", "--workers", "3",
        "--worker-class", "uvicorn_worker.UvicornWorker", "--bind", f"127.0.0.1:{port}",
        "--max-requests", "40", "--max-requests-jitter", "10", "--graceful-timeout", "5",
    ]


def without_resets(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The responses but for connections reset unanswered by a uvicorn worker
    reaching --max-requests: its shutdown closes the connections it accepted
    but has not read a request from yet (a uvicorn race, whatever the ENGINE;
    Kludex/uvicorn discussion 2315). Every reply and every other error stays.
    The requests on those connections never reached the app."""
    resets = ("Connection reset by peer", "RemoteDisconnected")
    kept = [r for r in responses if not any(reset in r.get("error", "") for reset in resets)]
    assert len(kept) > 0.9 * len(responses), responses
    return kept


def require_uvicorn_worker() -> None:
    require("gunicorn")
    try:
        import uvicorn_worker  # noqa: F401
    except ImportError:
        skip_or_fail("uvicorn-worker is not installed")


@SERVERS
def test_gunicorn_preload_asgi(vendor: str, tmp_path: Path) -> None:
    require(vendor)
    require_uvicorn_worker()
    prepare(vendor)
    port, report, log = free_port(), tmp_path / "master.json", tmp_path / "gunicorn.log"
    env = project_env(vendor, "forksafe", FORKSAFE_CONN_MAX_AGE="600", FORKSAFE_REPORT=str(report))
    with running(gunicorn_asgi_command(port), env, port, log):
        responses = hammer(port, path=ASYNC_PRODUCT)
        assert_master_kept_session(vendor, report)
    replies = without_resets(responses)
    assert_all_right(replies)
    assert len({r["pid"] for r in replies}) > 3  # Workers were recycled.
    assert unexpected_tracebacks(log) == []


def test_control_gunicorn_preload_asgi(tmp_path: Path) -> None:
    """On the plain ENGINE, the first recycled worker's exit ends the master's
    MariaDB session (mysqlclient says goodbye when it frees the inherited
    connection). psycopg 3 says nothing in a forked child: no control there."""
    require("mysql")
    require_uvicorn_worker()
    prepare("mysql")
    port, report, log = free_port(), tmp_path / "master.json", tmp_path / "gunicorn.log"
    env = project_env("mysql", "plain", FORKSAFE_CONN_MAX_AGE="600", FORKSAFE_REPORT=str(report))
    with running(gunicorn_asgi_command(port), env, port, log), Monitor("mysql") as monitor:
        responses = hammer(port, path=ASYNC_PRODUCT)
        master = json.loads(report.read_text())
        within(20, lambda: not monitor.alive(master["session"]), "the master's session ends", log)
    # The workers' requests were answered: sync_to_async's thread opened a
    # session of its own; the one the main thread inherited was only freed.
    assert wrong(without_resets(responses)) == []


# Django's parallel test runner ---------------------------------------------

# Not the suite's database: pytest-django's test_<that> may be in use.
TEST_DB = f"{dbconfig.test_database()}_parallel"


def server_databases(vendor: str) -> set[str]:
    """Test databases (the clones included) of TEST_DB left on the server."""
    sql = {
        "mysql": "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
        "postgresql": "SELECT datname FROM pg_database WHERE datname LIKE %s",
    }[vendor]
    with Monitor(vendor) as monitor:
        return {row[0] for row in monitor.query(sql, (f"test_{TEST_DB}%",))}


def drop_databases(vendor: str, names: set[str]) -> None:
    with Monitor(vendor) as monitor:
        for name in names:
            force = " WITH (FORCE)" if vendor == "postgresql" else ""
            monitor.query(f'DROP DATABASE IF EXISTS {name}{force}')


def parallel_test_run(vendor: str, engine: str, tmp_path: Path) -> tuple[dict[str, Any], list[tuple[int, int]], str]:
    """manage.py test shop --parallel 2 (fork): the runner's report, the
    (pid, session) each test ran on, and the output."""
    report, test_log = tmp_path / "runner.json", tmp_path / "tests.log"
    process = manage(
        vendor, engine, "test", "shop", "--parallel", "2", "--noinput",
        "--testrunner", "testproject.runner.SessionCheckingRunner",
        FORKSAFE_REPORT=str(report), FORKSAFE_TEST_LOG=str(test_log),
        FORKSAFE_MYSQL_NAME=TEST_DB, FORKSAFE_PG_NAME=TEST_DB,
    )
    sessions = [(int(pid), int(session)) for pid, session, _ in map(str.split, test_log.read_text().splitlines())]
    return json.loads(report.read_text()), sessions, process.stderr


@contextmanager
def clean_test_databases(vendor: str) -> Iterator[None]:
    if vendor in dbconfig.SERVER_VENDORS:
        drop_databases(vendor, server_databases(vendor))
    try:
        yield
    finally:
        if vendor in dbconfig.SERVER_VENDORS:
            drop_databases(vendor, server_databases(vendor))


@pytest.mark.parametrize("vendor", dbconfig.VENDORS)
def test_parallel_test_runner(vendor: str, tmp_path: Path) -> None:
    if vendor in dbconfig.SERVER_VENDORS:
        require(vendor)
    with clean_test_databases(vendor):
        report, sessions, output = parallel_test_run(vendor, "forksafe", tmp_path)
        left = server_databases(vendor) if vendor in dbconfig.SERVER_VENDORS else set()
    assert "OK" in output.splitlines() and report["processes"] == 2
    assert len(sessions) == 6  # Every test ran, in a worker.
    assert report["pid"] not in {pid for pid, _ in sessions}
    # The main process kept its session through the run, and dropped the clones.
    assert "error_after" not in report, report
    assert report["session_after"] == report["session_before"]
    assert left == set()
    if vendor != "sqlite3":
        assert report["session_before"] not in {session for _, session in sessions}
        pids_by_session = defaultdict(set)
        for pid, session in sessions:
            pids_by_session[session].add(pid)
        assert all(len(pids) == 1 for pids in pids_by_session.values()), pids_by_session


@SERVERS
def test_control_parallel_test_runner(vendor: str, tmp_path: Path) -> None:
    """On the plain ENGINE, each worker's setup closes the connection it
    inherited, ending the main process's session."""
    require(vendor)
    with clean_test_databases(vendor):
        report, _, _ = parallel_test_run(vendor, "plain", tmp_path)
    assert "session_after" not in report
    assert {
        "mysql": "OperationalError: (2006, 'Server has gone away')",
        "postgresql": "OperationalError: consuming input failed: server closed the connection unexpectedly",
    }[vendor] in report["error_after"]
