"""
End to end: task runners that fork (RQ through django-rq, Huey's process
workers, python-daemon) running testproject/ against real servers. Their
processes write rows (shop.models.Event) recording their process and their
server session; the tests read them on the server. Each has a plain-ENGINE
control where the failure is deterministic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import dbconfig
from tests.hazards import Monitor
from tests.programs import DEADLINE, PROJECT, events, manage, new_run, poll, project_env, require, running, stop
from tests.utils import SERVERS, require_modules

# RQ through django-rq ------------------------------------------------------

RQ_REDIS = dbconfig.redis_url(14)
RQ_JOBS_BEFORE = RQ_JOBS_AFTER = 5
RQ_TIMEOUT = 2
STUCK = RQ_JOBS_BEFORE


def run_rq_worker(vendor: str, engine: str, tmp_path: Path) -> dict[str, Any]:
    """Enqueue jobs, one of them killed by its job_timeout inside atomic(),
    then let a heartbeat worker (`rqworker --burst`) run them all and exit."""
    require(vendor, "redis")
    require_modules("django_rq")
    from redis import Redis
    from rq import Queue

    manage(vendor, "forksafe", "migrate", "--verbosity", "0")
    run = new_run(f"rq-{vendor}-{engine}")
    redis = Redis.from_url(RQ_REDIS)
    monitor = Monitor(vendor)
    try:
        queue = Queue(run, connection=redis)
        jobs = [queue.enqueue("shop.jobs.record", run, n) for n in range(RQ_JOBS_BEFORE)]
        jobs.append(queue.enqueue("shop.jobs.stuck", run, STUCK, job_timeout=RQ_TIMEOUT))
        jobs += [queue.enqueue("shop.jobs.record", run, STUCK + 1 + n) for n in range(RQ_JOBS_AFTER)]
        sessions_before = monitor.sessions()
        env = project_env(vendor, engine, FORKSAFE_RQ_QUEUE=run, FORKSAFE_RUN=run)
        command = [
            sys.executable, str(PROJECT / "manage.py"), "rqworker", run, "--burst",
            "--worker-class", "shop.rqworker.HeartbeatWorker",
        ]
        log = tmp_path / "rqworker.log"
        with running(command, env, None, log) as worker:
            try:
                worker.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                pytest.fail(f"rqworker --burst did not finish:\n{log.read_text()[-3000:]}")
        return {
            "events": events(vendor, run),
            "statuses": [str(job.get_status(refresh=True).value) for job in jobs],
            "stuck_error": getattr(jobs[STUCK].latest_result(), "exc_string", None) or "",
            "left_behind": monitor.new_sessions(sessions_before),
            "exit_code": worker.returncode,
            "log": log.read_text(),
        }
    finally:
        monitor.conn.close()
        Queue(run, connection=redis).delete(delete_jobs=True)
        redis.close()


@SERVERS
def test_rq_worker(vendor: str, tmp_path: Path) -> None:
    outcome = run_rq_worker(vendor, "forksafe", tmp_path)
    heartbeats, jobs = outcome["events"]["worker"], outcome["events"]["job"]
    worker_sessions = {heartbeat["session"] for heartbeat in heartbeats}
    # The worker kept one session, and wrote its heartbeat before every job,
    # the killed one and those after it included.
    assert len(worker_sessions) == 1
    assert [heartbeat["n"] for heartbeat in heartbeats] == list(range(1, RQ_JOBS_BEFORE + RQ_JOBS_AFTER + 2))
    # Every job committed its row, each in a work horse of its own, on a
    # session of its own; none on the worker's.
    assert [job["n"] for job in jobs] == [n for n in range(RQ_JOBS_BEFORE + RQ_JOBS_AFTER + 1) if n != STUCK]
    assert len({job["pid"] for job in jobs}) == len({job["session"] for job in jobs}) == len(jobs)
    assert not worker_sessions & {job["session"] for job in jobs}
    # The job killed by its job_timeout inside atomic() took its row with it.
    assert "stuck" not in outcome["events"]
    assert "JobTimeoutException" in outcome["stuck_error"]
    expected = ["finished"] * RQ_JOBS_BEFORE + ["failed"] + ["finished"] * RQ_JOBS_AFTER
    assert outcome["statuses"] == expected
    assert outcome["exit_code"] == 0
    assert outcome["left_behind"] == set()  # The killed job's session ended too.
    assert "OperationalError" not in outcome["log"]


@SERVERS
def test_control_rq_worker(vendor: str, tmp_path: Path) -> None:
    outcome = run_rq_worker(vendor, "plain", tmp_path)
    heartbeats, jobs = outcome["events"]["worker"], outcome["events"].get("job", [])
    worker_sessions = {heartbeat["session"] for heartbeat in heartbeats}
    # Jobs run on the worker's session...
    assert jobs and {job["session"] for job in jobs} <= worker_sessions
    # ...and after the killed job, the worker's session is unusable: it dies,
    # with its heartbeat and the jobs after it.
    assert outcome["statuses"][STUCK + 1 :] != ["finished"] * RQ_JOBS_AFTER
    assert len(heartbeats) <= STUCK + 1


# Huey, process workers -----------------------------------------------------

HUEY_TASKS = 20


def run_huey(vendor: str, engine: str, conn_max_age: str, tmp_path: Path) -> dict[str, Any]:
    """A Huey consumer that queried at startup (ShopConfig.ready()) forks two
    worker processes, which run db_tasks."""
    require(vendor, "redis")
    require_modules("huey")
    manage(vendor, "forksafe", "migrate", "--verbosity", "0")
    run = new_run(f"huey-{vendor}-{engine}")
    command = [sys.executable, str(PROJECT / "manage.py"), "run_huey", "-k", "process", "-w", "2", "--no-periodic"]
    env = project_env(
        vendor, engine, FORKSAFE_HUEY_NAME=run, FORKSAFE_READY_RUN=run, FORKSAFE_CONN_MAX_AGE=conn_max_age
    )
    log = tmp_path / "huey.log"
    with running(command, env, None, log) as consumer:
        consumer_session = poll(lambda: events(vendor, run).get("ready"), "the consumer's query")[0]["session"]
        tasks = json.loads(
            manage(
                vendor, engine, "huey_enqueue", run, "--tasks", str(HUEY_TASKS), "--timeout", "20",
                FORKSAFE_HUEY_NAME=run, FORKSAFE_CONN_MAX_AGE=conn_max_age,
            ).stdout
        )
        monitor = Monitor(vendor)
        try:
            consumer_alive = monitor.alive(consumer_session)
        finally:
            monitor.conn.close()
        stop(consumer)
    return {
        "consumer_session": consumer_session,
        "consumer_alive": consumer_alive,
        "tasks": tasks,
        "events": events(vendor, run),
        "log": log.read_text(),
    }


@SERVERS
@pytest.mark.parametrize("conn_max_age", ["0", "600"])
def test_huey_process_workers(vendor: str, conn_max_age: str, tmp_path: Path) -> None:
    outcome = run_huey(vendor, "forksafe", conn_max_age, tmp_path)
    tasks = outcome["tasks"]
    assert [task.get("error") for task in tasks] == [None] * HUEY_TASKS
    assert outcome["consumer_alive"]
    assert outcome["consumer_session"] not in {task["session"] for task in tasks}
    # Every task's row is on the server, written by a worker, not the consumer.
    rows = outcome["events"]["task"]
    assert sorted(row["n"] for row in rows) == list(range(HUEY_TASKS))
    assert outcome["consumer_session"] not in {row["session"] for row in rows}
    assert {row["pid"] for row in rows} == {task["pid"] for task in tasks}
    assert outcome["events"]["ready"][0]["pid"] not in {row["pid"] for row in rows}
    sessions_of = {pid: {row["session"] for row in rows if row["pid"] == pid} for pid in {row["pid"] for row in rows}}
    if conn_max_age == "0":  # db_task closes its connection before and after each task.
        assert len({row["session"] for row in rows}) == HUEY_TASKS
    else:  # Each worker keeps a session of its own.
        assert [len(sessions) for sessions in sessions_of.values()] == [1] * len(sessions_of)
        assert len({row["session"] for row in rows}) == len(sessions_of)
    assert "Traceback" not in outcome["log"]


@SERVERS
@pytest.mark.parametrize("conn_max_age", ["0", "600"])
def test_control_huey_process_workers(vendor: str, conn_max_age: str, tmp_path: Path) -> None:
    outcome = run_huey(vendor, "plain", conn_max_age, tmp_path)
    sessions = {task.get("session") for task in outcome["tasks"]}
    if conn_max_age == "0":
        # db_task's close_old_connections() closes the inherited connection:
        # the consumer's session is ended by its first worker's first task.
        assert not outcome["consumer_alive"]
    else:
        # The workers' tasks run on the consumer's session, both workers at
        # once: some read each other's results (or hang, on PostgreSQL).
        assert outcome["consumer_session"] in sessions or any(task.get("error") for task in outcome["tasks"])


# python-daemon -------------------------------------------------------------

DAEMON_HEARTBEATS = 10


def stop_daemon(pid: int) -> None:
    """Kill a daemon that did not finish, by its PID (it is not our child),
    if that PID is still the daemon's."""
    try:
        if b"daemon_heartbeats" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def run_daemon(vendor: str, engine: str, tmp_path: Path) -> dict[str, Any]:
    """A management command queries, daemonizes (DaemonContext: two forks,
    every descriptor >= 3 closed) and writes heartbeats from the daemon."""
    require(vendor)
    require_modules("daemon")
    manage(vendor, "forksafe", "migrate", "--verbosity", "0")
    run = new_run(f"daemon-{vendor}-{engine}")
    pidfile, report, log = tmp_path / "daemon.pid", tmp_path / "report.json", tmp_path / "daemon.log"
    options = ["--heartbeats", str(DAEMON_HEARTBEATS), "--pidfile", str(pidfile), "--report", str(report)]
    try:
        # The command returns at once: the daemon goes on, detached.
        manage(vendor, engine, "daemon_heartbeats", run, *options, "--log", str(log))
        outcome = json.loads(poll(lambda: report.exists() and report.read_text(), "the daemon's report", 60))
    finally:
        if not report.exists() and pidfile.exists():
            stop_daemon(int(pidfile.read_text()))
    return {**outcome, "events": events(vendor, run), "log": log.read_text()}


@SERVERS
def test_python_daemon(vendor: str, tmp_path: Path) -> None:
    outcome = run_daemon(vendor, "forksafe", tmp_path)
    assert outcome["error"] is None
    assert outcome["written"] == DAEMON_HEARTBEATS
    before, heartbeats = outcome["events"]["before"], outcome["events"]["daemon"]
    assert [row["n"] for row in heartbeats] == list(range(DAEMON_HEARTBEATS))
    assert {row["pid"] for row in heartbeats} == {outcome["pid"]} != {before[0]["pid"]}
    assert len({row["session"] for row in heartbeats}) == 1  # The daemon's own.
    assert heartbeats[0]["session"] != before[0]["session"]
    assert outcome["log"] == ""


@SERVERS
def test_control_python_daemon(vendor: str, tmp_path: Path) -> None:
    outcome = run_daemon(vendor, "plain", tmp_path)
    # DaemonContext closed the inherited connection's descriptor under the
    # driver: "(2006, 'Server has gone away')", "connection socket closed".
    assert outcome["error"].startswith("OperationalError")
    assert outcome["written"] == 0
    assert "daemon" not in outcome["events"]
