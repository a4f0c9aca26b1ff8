"""multiprocessing's forkserver: its server process is forked for every
worker, and hands them whatever its preloaded modules opened."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from django_forksafe.hazards import session_id
from tests.hazards.common import Result, setup

# The preloaded module's settings and where it reports its session.
DATABASES_ENV = "FORKSAFE_FORKSERVER_DATABASES"
REPORT_ENV = "FORKSAFE_FORKSERVER_REPORT"
TASKS = 3


def preload() -> None:
    """Run at import by tests.hazards.forkserver_preload, in the forkserver
    process: set Django up and open the default connection, as a module that
    queries at import time does (a settings module, a registry filled from
    the database)."""
    import django
    from django.conf import settings

    settings.configure(DATABASES=json.loads(os.environ[DATABASES_ENV]), USE_TZ=True)
    django.setup()
    Path(os.environ[REPORT_ENV]).write_text(json.dumps({"pid": os.getpid(), "session": session_id()}))


def worker_session() -> Result:
    """A pool task: the session this worker's default connection is on, then
    close() it, as a worker cleaning up after its task does."""
    from django.db import connection

    try:
        return {"pid": os.getpid(), "parent_pid": os.getppid(), "session": session_id()}
    except Exception as exc:
        return {"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    finally:
        connection.close()


def forkserver_preload_connection(vendor: str, engine: str) -> Result:
    """A forkserver whose preloaded module opened a connection; a pool of one
    worker replaced after each task runs TASKS tasks in turn, each in a new
    child of the forkserver."""
    import multiprocessing

    from django.db import connection

    monitor = setup(vendor, engine)
    assert monitor is not None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.hazards.forkserver_preload"])
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory, "forkserver.json")
        os.environ[DATABASES_ENV] = json.dumps({"default": connection.settings_dict}, default=str)
        os.environ[REPORT_ENV] = str(report)
        pool: Any = context.Pool(1, maxtasksperchild=1)
        try:
            tasks = [pool.apply_async(worker_session).get(60) for _ in range(TASKS)]
            forkserver = json.loads(report.read_text())
            return {
                "forkserver": forkserver,
                "tasks": tasks,
                "forkserver_session_alive": monitor.alive(forkserver["session"]),
                # The server ends a session asynchronously after its goodbye.
                "forkserver_session_ended": monitor.session_ended(forkserver["session"], 20),
            }
        finally:
            pool.terminate()
            pool.join()
            connection.close()
