"""
End to end: the real programs that fork Django apps (gunicorn, uWSGI, a
Celery prefork worker, a process pool in a management command) running
testproject/ against real servers, each with a plain-ENGINE control where the
failure is deterministic.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests import dbconfig
from tests.hazards import Monitor
from tests.programs import (
    PRODUCTS,
    RANDOM,
    assert_all_right,
    assert_master_kept_session,
    free_port,
    gunicorn_command,
    hammer,
    manage,
    prepare,
    project_env,
    require,
    running,
    shared_sessions,
    stop,
    unexpected_tracebacks,
    wrong,
)
from tests.utils import SERVERS


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
    broker = dbconfig.redis_url(15)
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
