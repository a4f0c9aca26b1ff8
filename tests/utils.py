"""
Helpers shared by the test modules (no test module imports another):
skipping, or failing in CI, when something a test needs is missing; running
a fork hazard of tests.hazards in a fresh process; and judging its result.
The helpers for real programs on testproject/ are in tests/programs.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests import IMPORT_PATH, dbconfig

ROOT = Path(__file__).resolve().parent.parent
SERVERS = pytest.mark.parametrize("vendor", dbconfig.SERVER_VENDORS)


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for want of something it needs (a server, a program, a
    package); in CI (CI=true), where everything must be there, fail it."""
    if dbconfig.in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def require_server(vendor: str) -> None:
    """Skip (fail in CI) when the vendor's test server is not reachable."""
    reason = dbconfig.unreachable_reason(vendor)
    if reason is not None:
        skip_or_fail(reason)


def require_native() -> None:
    """Skip (fail in CI) where the C extension is not built (no compiler),
    for a test of what only it does; the pure-Python path has tests of its own."""
    import importlib.util

    if importlib.util.find_spec("django_forksafe._native") is None:
        skip_or_fail("needs the C extension django_forksafe._native, not built here (no C compiler?)")


def require_modules(*names: str) -> None:
    """Skip (fail in CI) when a package the test needs is not installed."""
    for name in names:
        try:
            __import__(name)
        except ImportError as exc:
            skip_or_fail(f"{name} is not installed ({exc})")


# The fork hazards of tests.hazards, each run in a fresh process ------------

LOST_SESSION = ("Lost connection", "gone away", "server closed the connection", "Connection not available")


def run(
    scenario: str, vendor: str, engine: str = "forksafe", allow_child_error: bool = False, **env: str
) -> dict[str, Any]:
    # Imported here, not at the top: processes that import this module for
    # skip_or_fail() alone (tests.caches, tests.test_system_calls) stay
    # without tests.hazards and the package it imports.
    from tests.hazards import SCENARIOS

    assert scenario in SCENARIOS
    needed = dbconfig.SERVER_VENDORS if scenario == "several_aliases" else (vendor,)
    for name in needed:
        require_server(name)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hazards", scenario, vendor, engine],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=IMPORT_PATH,
        env={**os.environ, "PYTHONPATH": IMPORT_PATH, **env},
    )
    try:
        stdout, stderr = process.communicate(timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{scenario} hung; where each of its processes was:\n{dump_and_kill(process)}")
    assert process.returncode == 0, stderr
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    assert allow_child_error or "child_error" not in result, result
    return result


SCENARIO_TIMEOUT = 280  # Seconds: a hang, not a slow run (the slowest take 20 s loaded).
DUMP_SIGNAL = signal.SIGUSR1  # tests.hazards.__main__ makes it dump every thread's stack.


def descendants(pid: int) -> list[int]:
    """pid's living descendants, read from /proc, parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid follows the command's closing parenthesis.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        offspring = children.get(pending.pop(0), [])
        found.extend(offspring)
        pending.extend(offspring)
    return found


def dump_and_kill(process: subprocess.Popen[str]) -> str:
    """Ask a hung scenario and its children for their stacks (on the stderr
    they share), then kill them all; returns what they wrote."""
    family = [process.pid, *descendants(process.pid)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, DUMP_SIGNAL)
    try:
        # The dumps are written by the signal handler at once; a process
        # that cannot run it (stuck in C with signals blocked) is killed.
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate()
    else:
        for pid in family[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return stderr


MECHANISMS = pytest.mark.parametrize("native", ["1", "0"], ids=["native", "pure-python"])


def run_with(scenario: str, vendor: str, engine: str = "forksafe", native: str = "1") -> dict[str, Any]:
    """run() with the C extension (native "1": needed, see require_native)
    or without it ("0": DJANGO_FORKSAFE_NATIVE=0)."""
    if native == "1":
        require_native()
    return run(scenario, vendor, engine, DJANGO_FORKSAFE_NATIVE=native)


def assert_kept_session(result: dict[str, Any]) -> None:
    """The parent's next query ran on its original server session."""
    assert result["parent_error"] is None
    assert result["parent_same_raw"]
    assert result["parent_same_session"]
    assert result["parent_probe"] == 42  # Its TEMPORARY table is still there.
    assert result["parent_session_on_server"]


def assert_lost_session(result: dict[str, Any]) -> None:
    assert result["parent_error"] is not None
    assert any(message in result["parent_error"] for message in LOST_SESSION), result
    assert not result["parent_session_on_server"]


def assert_child_reconnected(result: dict[str, Any]) -> None:
    assert result["child_session"] != result["parent_session"]
    assert result["connection_created_in_child"]


def assert_every_reply_right_from_own_session(result: dict[str, Any]) -> None:
    """The concurrent scenarios: every reply the one asked for, each process
    on one session of its own, the parent on its original one."""
    processes = [result["parent"], *result["children"]]
    assert [process.get("child_error") for process in processes] == [None] * len(processes)
    assert [process["wrong_replies"] for process in processes] == [0] * len(processes)
    sessions = [process["sessions"] for process in processes]
    assert all(len(process_sessions) == 1 for process_sessions in sessions)
    assert len({process_sessions[0] for process_sessions in sessions}) == len(processes)
    assert result["parent"]["sessions"] == [result["parent_session"]]
    assert_kept_session(result)


def assert_child_outside_parent_transaction(result: dict[str, Any]) -> None:
    """The fork_in_atomic scenarios, the child writing in the inherited block."""
    # Inside the inherited block the child writes, in autocommit, on a
    # session of its own...
    assert "error_in_block" not in result and "error_leaving_block" not in result, result
    assert result["session_in_block"] != result["parent_session"]
    # ...leaving the block committed nothing of the parent's...
    assert result["committed_before_rollback"] == [2, 3]
    assert result["parent_sees_own_row"] is True
    # ...nor ran the parent's on_commit callbacks...
    assert result["on_commit_ran_in_child"] is False
    assert result["session_after_block"] == result["session_in_block"]
    # ...and the parent's rollback undid its own row, never the child's.
    assert result["committed_after_rollback"] == [2, 3]
    assert result["parent_on_commit_ran"] == []
    assert result["parent_same_session"]


def assert_child_committed_parent_transaction(result: dict[str, Any]) -> None:
    assert result["session_in_block"] == result["parent_session"]
    assert 1 in result["committed_before_rollback"]
    assert 1 in result["committed_after_rollback"]  # The parent's rollback came too late.
    assert result["on_commit_ran_in_child"] is True


def assert_pool_workers_have_sessions_of_their_own(result: dict[str, Any]) -> None:
    """The process pools started inside atomic()."""
    tasks = result["tasks"]
    assert [task.get("error") for task in tasks] == [None] * 8
    assert result["committed"] == [1, 2, 3, 4, 5, 6, 7, 8]  # Not the parent's 0.
    assert result["parent_session"] not in {task["session"] for task in tasks}
    # Each worker kept one session of its own.
    assert len({(task["pid"], task["session"]) for task in tasks}) == len({task["pid"] for task in tasks})
    assert result["parent_same_session"]


def assert_pool_workers_lost_writes_with_parent_transaction(result: dict[str, Any]) -> None:
    # The workers wrote into the parent's transaction, and lost 1-4 with it.
    assert not {1, 2, 3, 4} & set(result["committed"])
