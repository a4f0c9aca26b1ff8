"""
End to end: task queues whose processes fork with a live connection pool.
A django-q2 cluster (qcluster: main process, sentinel, workers recycled and
re-forked) on PostgreSQL with Django's connection pool and on MariaDB, and a
Celery prefork worker with Django's connection pool and
--max-tasks-per-child=1 (Celery's Django fixup calls close_pool() in every
child). Sessions are checked on the server side: those a process holds are
found from its TCP sockets (/proc) in pg_stat_activity / PROCESSLIST. Each
has a plain-ENGINE control.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests import dbconfig
from tests.hazards import Monitor
from tests.programs import PROJECT, events, manage, new_run, poll, project_env, require, running, stop
from tests.utils import SERVERS, require_modules

POOL_MIN_SIZE, POOL_MAX_SIZE = 2, 4  # testproject's OPTIONS["pool"] with FORKSAFE_PG_POOL=1.
NO_CONNECTION = "couldn't get a connection"  # psycopg_pool.PoolTimeout


def client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the TCP connections to `server_port` whose sockets
    process `pid` holds (from /proc: Linux only)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # Closed meanwhile.
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def held_sessions(monitor: Monitor, pid: int) -> set[int]:
    """The server sessions whose client sockets process `pid` holds."""
    ports = client_ports(pid, int(dbconfig.server(monitor.vendor)["PORT"]))
    if monitor.vendor == "mysql":
        rows = monitor.query("SELECT ID, HOST FROM information_schema.PROCESSLIST")
        port_of = {int(session): str(host or "").rpartition(":")[2] for session, host in rows}
        return {session for session, port in port_of.items() if port.isdigit() and int(port) in ports}
    rows = monitor.query("SELECT pid, client_port FROM pg_stat_activity")
    return {int(session) for session, port in rows if port in ports}


# django-q2 -----------------------------------------------------------------

Q_TASKS = 30
Q_RECYCLE = 5  # Tasks per worker before the sentinel recycles it.


def run_qcluster(vendor: str, engine: str, tmp_path: Path, timeout: int = 90) -> dict[str, Any]:
    """A qcluster whose main process filled its pool at startup (ready());
    its sentinel writes its status to the database cache; three workers,
    recycled every Q_RECYCLE tasks, run Q_TASKS tasks through the ORM broker."""
    require(vendor)
    require_modules("django_q", *(["psycopg_pool"] if vendor == "postgresql" else []))
    run = new_run(f"q-{vendor}-{engine}")
    env: dict[str, Any] = {"FORKSAFE_Q_NAME": run, "FORKSAFE_Q_RECYCLE": str(Q_RECYCLE), "FORKSAFE_CACHE": "db"}
    if vendor == "postgresql":
        env["FORKSAFE_PG_POOL"] = "1"
    manage(vendor, "forksafe", "migrate", "--verbosity", "0")
    manage(vendor, "forksafe", "createcachetable", **env)
    log = tmp_path / "qcluster.log"
    command = [sys.executable, str(PROJECT / "manage.py"), "qcluster"]
    with Monitor(vendor) as monitor, running(
        command, project_env(vendor, engine, FORKSAFE_READY_RUN=run, **env), None, log
    ) as cluster:
        ready = poll(lambda: events(vendor, run).get("ready"), "the main process's query")[0]
        main_sessions = held_sessions(monitor, cluster.pid)
        options = ["--tasks", str(Q_TASKS), "--timeout", str(timeout)]
        enqueue = subprocess.run(
            [sys.executable, str(PROJECT / "manage.py"), "q_enqueue", run, *options],
            env=project_env(vendor, engine, **env),
            capture_output=True,
            text=True,
            timeout=timeout + 60,
        )
        assert enqueue.returncode == 0, enqueue.stderr
        tasks = json.loads(enqueue.stdout)
        sentinels = {task["ppid"] for task in tasks if "ppid" in task}
        sentinel_sessions = set().union(*(held_sessions(monitor, pid) for pid in sentinels))
        main_sessions_after = held_sessions(monitor, cluster.pid)
        main_alive = {session: monitor.alive(session) for session in main_sessions}
        stop(cluster)
    return {
        "ready": ready,
        "main_pid": cluster.pid,
        "main_sessions": main_sessions,
        "main_sessions_after": main_sessions_after,
        "main_alive": main_alive,
        "sentinels": sentinels,
        "sentinel_sessions": sentinel_sessions,
        "tasks": tasks,
        "events": events(vendor, run),
        "log": log.read_text(),
    }


@SERVERS
def test_django_q2_cluster(vendor: str, tmp_path: Path) -> None:
    outcome = run_qcluster(vendor, "forksafe", tmp_path)
    tasks, main_sessions = outcome["tasks"], outcome["main_sessions"]
    assert [task.get("error") for task in tasks] == [None] * Q_TASKS
    if vendor == "postgresql":
        # The main process's pool: min_size sessions, the ready() query on
        # one of them, all still there after the run (qcluster's command
        # returns once the sentinel runs: Django's close_all() gives the
        # connection back to the pool, which stays open).
        assert len(main_sessions) == POOL_MIN_SIZE
        assert outcome["ready"]["session"] in main_sessions
        assert outcome["main_sessions_after"] == main_sessions
        assert all(outcome["main_alive"].values())
    else:
        # Without a pool, that close_all() ends the main process's session
        # itself, while the cluster runs.
        main_sessions = main_sessions | {outcome["ready"]["session"]}
    # One sentinel; on PostgreSQL it holds a pool of its own (its status
    # goes to the database cache), none of the main process's sessions.
    assert len(outcome["sentinels"]) == 1
    sentinel_sessions = outcome["sentinel_sessions"]
    if vendor == "postgresql":
        assert sentinel_sessions
    assert not sentinel_sessions & main_sessions
    # No task ran on a session the main process or the sentinel holds, and
    # no session served two processes.
    rows = outcome["events"]["task"]
    assert sorted(row["n"] for row in rows) == list(range(Q_TASKS))
    task_sessions = {row["session"] for row in rows}
    assert not task_sessions & (main_sessions | sentinel_sessions)
    pids_of: dict[int, set[int]] = {}
    for row in rows:
        pids_of.setdefault(row["session"], set()).add(row["pid"])
    assert [session for session, pids in pids_of.items() if len(pids) > 1] == []
    # Workers were recycled and re-forked: 3 workers, Q_RECYCLE tasks each.
    workers = {row["pid"] for row in rows}
    assert len(workers) >= Q_TASKS // Q_RECYCLE
    if vendor == "postgresql":
        # Each re-forked worker builds a pool of its own on its first task:
        # min_size sessions, and one more when that task asks before the
        # pool has filled (3 as measured here).
        sizes = {task["pid"]: task["pool_size"] for task in tasks}
        assert {task["pool_min"] for task in tasks} == {POOL_MIN_SIZE}
        assert all(POOL_MIN_SIZE <= size <= POOL_MAX_SIZE for size in sizes.values()), sizes
        assert all(len({r["session"] for r in rows if r["pid"] == pid}) <= sizes[pid] for pid in workers)
    assert NO_CONNECTION not in outcome["log"]
    assert "Traceback" not in outcome["log"]


def test_control_django_q2_cluster(tmp_path: Path) -> None:
    """PostgreSQL with the pool only: without one (and on MariaDB), django-q2
    closes every connection before it forks (close_all() in the sentinel,
    close_old_connections() in the broker), and the plain ENGINE shows no
    deterministic failure."""
    outcome = run_qcluster("postgresql", "plain", tmp_path, timeout=20)
    main_sessions = outcome["main_sessions"]
    task_sessions = {task.get("session") for task in outcome["tasks"]}
    errors = [task["error"] for task in outcome["tasks"] if "error" in task]
    # The sentinel inherits the main process's pool, its idle sessions in
    # it; close_all() before forking workers leaves them there. Every worker
    # inherits that pool and takes the same idle session, all at once (or
    # waits in vain for the pool's threads: "couldn't get a connection").
    # Seen: no task finished at all, the pusher read another process's reply
    # ("Failed to pull task from broker ... RuntimeError: generator raised
    # StopIteration"), and the workers and the monitor hung on the session.
    assert task_sessions & main_sessions or errors or NO_CONNECTION in outcome["log"]


# Celery prefork, Django's connection pool -----------------------------------

CELERY_TASKS = 12


@contextmanager
def own_database(monitor: Monitor, name: str) -> Iterator[None]:
    """A PostgreSQL database of the test's own: its statistics count only
    the test's sessions."""
    monitor.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    monitor.query(f'CREATE DATABASE "{name}"')
    try:
        yield
    finally:
        monitor.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sessions_established(monitor: Monitor, name: str) -> int:
    """Sessions ever established to database `name`, once none is left (the
    server counts a session's statistics when it ends)."""
    sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s"
    poll(lambda: monitor.query(sql, (name,))[0][0] == 0, f"the sessions on {name} to end", 30)
    return int(monitor.query("SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,))[0][0])


def run_celery_pool(engine: str, tmp_path: Path) -> dict[str, Any]:
    """A prefork worker with Django's pool, each child running one task. The
    main process fills its pool before forking its children (worker_init),
    and queries every session in it at shutdown."""
    require("postgresql", "redis", "celery")
    require_modules("psycopg_pool")
    from celery import Celery

    database = f"forksafe_celery_pool_{os.getpid()}_{engine}"
    broker = dbconfig.redis_url(15)
    queue = f"forksafe-pool-{os.getpid()}-{engine}"
    report = tmp_path / "main.json"
    env = {"FORKSAFE_PG_POOL": "1", "FORKSAFE_PG_NAME": database}
    command = [
        "celery", "-A", "testproject.celery", "worker", "--pool", "prefork", "--concurrency", "2",
        "--queues", queue, "--without-heartbeat", "--without-gossip", "--without-mingle",
        "--max-tasks-per-child", "1", "--loglevel", "INFO",
    ]
    with Monitor("postgresql") as monitor, own_database(monitor, database):
        manage("postgresql", "forksafe", "migrate", "--verbosity", "0", FORKSAFE_PG_NAME=database)
        manage("postgresql", "forksafe", "seed", "--products", "20", FORKSAFE_PG_NAME=database)
        before = sessions_established(monitor, database)
        client = Celery(broker=broker, backend=broker)
        worker_env = project_env(
            "postgresql", engine, FORKSAFE_CELERY_BROKER=broker, FORKSAFE_REPORT=str(report), **env
        )
        try:
            with running(command, worker_env, None, tmp_path / "celery.log") as worker:
                first = client.send_task("shop.tasks.product_info", args=[1], queue=queue)
                outcomes = [_outcome(first)]
                main_sessions = held_sessions(monitor, worker.pid)  # worker_init is done.
                results = [
                    client.send_task("shop.tasks.product_info", args=[pk % 20 + 1], queue=queue)
                    for pk in range(1, CELERY_TASKS)
                ]
                outcomes += [_outcome(result) for result in results]
                main_sessions_after = held_sessions(monitor, worker.pid)
                main_alive = {session: monitor.alive(session) for session in main_sessions}
                stop(worker)  # Warm shutdown: the main process queries its pool.
        finally:
            client.close()
        established = sessions_established(monitor, database) - before
    return {
        "outcomes": outcomes,
        "main_sessions": main_sessions,
        "main_sessions_after": main_sessions_after,
        "main_alive": main_alive,
        "main": json.loads(report.read_text()) if report.exists() else {},
        "established": established,
        "log": (tmp_path / "celery.log").read_text(),
    }


def _outcome(result: Any) -> dict[str, Any]:
    try:
        return dict(result.get(timeout=60))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def test_celery_prefork_with_pool(tmp_path: Path) -> None:
    outcome = run_celery_pool("forksafe", tmp_path)
    outcomes, main_sessions, main = outcome["outcomes"], outcome["main_sessions"], outcome["main"]
    assert [o.get("error") for o in outcomes] == [None] * CELERY_TASKS
    assert [o["name"] for o in outcomes] == [f"product {pk % 20 + 1}" for pk in range(CELERY_TASKS)]
    # One child per task, each on a session of its own, none of the main
    # process's.
    assert len({o["pid"] for o in outcomes}) == CELERY_TASKS
    assert len({o["session"] for o in outcomes}) == CELERY_TASKS
    assert not {o["session"] for o in outcomes} & main_sessions
    # The main process's pooled sessions survived every child's close_pool(),
    # and answer its queries at shutdown.
    assert len(main_sessions) == POOL_MIN_SIZE
    assert outcome["main_sessions_after"] == main_sessions
    assert all(outcome["main_alive"].values())
    assert "error_at_shutdown" not in main and "pool_error_at_shutdown" not in main, main
    assert main["session_at_shutdown"] == main["session"]
    assert set(main["pool_sessions_at_shutdown"]) == main_sessions
    # Sessions established on the server: the main process's pool, and per
    # task, the pool its child opens on first use, min_size + 1 (the first
    # checkout, before the pool has filled, grows it by one); closed by
    # Celery's close_pool() after the task. None for a pool opened only to
    # be closed, in a child that runs no task (2 more children than tasks).
    per_task = (outcome["established"] - POOL_MIN_SIZE) / CELERY_TASKS
    assert 1 <= per_task <= POOL_MIN_SIZE + 1, outcome["established"]
    assert "Traceback" not in outcome["log"]


def test_control_celery_prefork_with_pool(tmp_path: Path) -> None:
    outcome = run_celery_pool("plain", tmp_path)
    main = outcome["main"]
    # Each child's close_pool() closes the pool it inherited: the main
    # process's idle pooled session is ended (Terminate on the shared socket).
    assert not all(outcome["main_alive"].values()) or "pool_error_at_shutdown" in main, main
