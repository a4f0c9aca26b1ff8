"""How CPython forks: multiprocessing's forkserver, whose server process is
forked for every worker and hands them whatever its preloaded modules opened;
CPython 3.12's DeprecationWarning on a fork in a multi-threaded process."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django_forksafe.hazards import libc_fork, session_id
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


def os_threads() -> int:
    """The process's threads as the kernel counts them (what CPython 3.12+
    counts for its warning where it can), C libraries' threads included."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def threads_at_fork(start_thread: bool = False) -> Callable[[str, str], Result]:
    """The parent queries (its connection made, the package's hooks run),
    forks with os.fork() and then through libc; each child queries on a
    session of its own. Reports the threads at each fork and the warnings it
    raised. With `start_thread`, the scenario itself starts a thread first:
    the control, which CPython 3.12+ warns about."""

    def scenario(vendor: str, engine: str) -> Result:
        setup(vendor, engine)
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        release = threading.Event()
        thread = threading.Thread(target=release.wait)
        if start_thread:
            thread.start()
        observed: Result = {"python_threads": [], "os_threads": [], "warnings": [], "child_statuses": []}
        try:
            for fork in (os.fork, libc_fork):
                observed["python_threads"].append(threading.active_count())
                observed["os_threads"].append(os_threads())
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pid = fork()
                    if pid == 0:
                        try:
                            with connection.cursor() as cursor:
                                cursor.execute("SELECT 1")
                            connection.close()
                        finally:
                            os._exit(0)
                observed["warnings"] += [f"{w.category.__name__}: {w.message}" for w in caught]
                observed["child_statuses"].append(os.waitpid(pid, 0)[1])
        finally:
            release.set()
            if start_thread:
                thread.join()
            connection.close()
        return observed

    return scenario
