"""
multiprocessing's start methods: what forks this process and what does not
(docs/multiprocessing.rst), and a forkserver that hands a connection opened
by its preloaded modules to every worker.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import pytest

from tests import dbconfig
from tests.hazards.start_methods import TASKS
from tests.utils import SERVERS, run

# CPython 3.14 made forkserver the default on Linux; fork before.
DEFAULT_START_METHOD = "forkserver" if sys.version_info >= (3, 14) else "fork"


# Pool() and ProcessPoolExecutor() as a management command calls them: no
# context given, in a process of their own (the start method is fixed on first
# use); each worker reports its parent.
DEFAULT_POOLS = """
import json, multiprocessing, os
from concurrent.futures import ProcessPoolExecutor

if __name__ == "__main__":
    with multiprocessing.Pool(1) as pool:
        pool_parent = pool.apply(os.getppid)
    with ProcessPoolExecutor(1) as executor:
        executor_parent = executor.submit(os.getppid).result(60)
    print(json.dumps({"pid": os.getpid(), "start_method": multiprocessing.get_start_method(),
                      "Pool": pool_parent, "ProcessPoolExecutor": executor_parent}))
"""


def test_default_start_method() -> None:
    assert multiprocessing.get_all_start_methods()[0] == DEFAULT_START_METHOD


def test_default_pools_fork_the_caller_only_with_fork() -> None:
    """Their workers are children of the caller only where the default start
    method is fork; with forkserver, of the forkserver."""
    process = subprocess.run([sys.executable, "-c", DEFAULT_POOLS], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    assert result["start_method"] == DEFAULT_START_METHOD
    for kind in ("Pool", "ProcessPoolExecutor"):
        assert (result[kind] == result["pid"]) == (DEFAULT_START_METHOD == "fork"), result


@SERVERS
def test_forkserver_preload_connection_not_shared_with_workers(vendor: str) -> None:
    result = run("forkserver_preload_connection", vendor)
    forkserver, tasks = result["forkserver"], result["tasks"]
    assert all("error" not in task for task in tasks), tasks
    assert all(task["parent_pid"] == forkserver["pid"] for task in tasks)  # The forkserver's children.
    sessions = {task["session"] for task in tasks}
    assert len(sessions) == TASKS and forkserver["session"] not in sessions
    assert result["forkserver_session_alive"]


@SERVERS
def test_control_forkserver_preload_connection_shared_with_workers(vendor: str) -> None:
    """Django's ENGINE: the first worker runs on the forkserver's session and
    its close() ends it; the next workers inherit a dead connection."""
    result = run("forkserver_preload_connection", vendor, "plain")
    forkserver, tasks = result["forkserver"], result["tasks"]
    assert tasks[0].get("session") == forkserver["session"]
    assert result["forkserver_session_ended"]
    assert all("error" in task for task in tasks[1:]), tasks


@pytest.mark.parametrize("vendor", dbconfig.VENDORS)
def test_package_starts_no_thread_so_forks_do_not_warn(vendor: str) -> None:
    """The package starts no thread: a process using it forks without
    CPython 3.12's DeprecationWarning (a multi-threaded fork), its children
    query, and nothing warns, with every warning an error."""
    result = run("threads_at_fork", vendor, PYTHONWARNINGS="error")  # Every warning an error.
    assert result["python_threads"] == [1, 1] and result["os_threads"] == [1, 1]
    assert result["warnings"] == []
    assert result["child_statuses"] == [0, 0]


@pytest.mark.parametrize("vendor", dbconfig.VENDORS)
def test_control_thread_started_by_the_program_warns(vendor: str) -> None:
    """A thread of the program's own: CPython 3.12+ warns at os.fork() (the
    warning the test above would see); a fork through libc runs no Python."""
    result = run("threads_at_fork_thread_started", vendor, PYTHONWARNINGS="error")
    assert result["python_threads"] == [2, 2] and result["os_threads"] == [2, 2]
    expected = 1 if sys.version_info >= (3, 12) else 0
    assert len([w for w in result["warnings"] if "multi-threaded" in w]) == expected, result
