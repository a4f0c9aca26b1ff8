"""
Sockets Django never saw: a raw driver connection opened outside Django,
and a driver without fileno() (PyMySQL, mysql-connector). Silenced in a child all the same.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from django_forksafe.hazards import SESSION_SQL, run_child, session_id
from tests.hazards.common import DRIVER_CLASSES, Monitor, Result, setup


def raw_connection_outside_django(vendor: str, engine: str) -> Result:
    """The parent holds a driver connection of its own (the monitor's kind),
    beside Django's settings; the child closes it."""
    setup(vendor, engine)
    from django.db import connection

    connection.ensure_connection()  # Django's own, to the same server.
    raw = Monitor(vendor)
    session = raw.query(SESSION_SQL[vendor])[0][0]

    def work() -> Result:
        raw.conn.close()  # Sends COM_QUIT / Terminate, unless silenced.
        return {}

    result = run_child(work)
    try:
        result["raw_same_session"] = raw.query(SESSION_SQL[vendor])[0][0] == session
        result["raw_error"] = None
    except Exception as exc:
        result["raw_error"] = f"{type(exc).__name__}: {exc}"
    result["raw_session_on_server"] = Monitor(vendor).alive(session)
    return result


def raw_connection_in_other_threads_local(vendor: str, engine: str) -> Result:
    """Another thread holds a driver connection of its own only in a
    threading.local, and waits across the fork; the child does nothing.
    CPython's after-fork clean-up in the child clears that thread's state,
    and with it frees the connection (mysqlclient's deallocator sends
    COM_QUIT), before any Python at-fork handler runs."""
    setup(vendor, engine)
    from django.db import connection

    connection.ensure_connection()  # Django's own, to the same server: its endpoint is recorded.
    local = threading.local()
    opened, forked, checked = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def hold() -> None:
        local.raw = Monitor(vendor)  # Referenced by the thread-local alone.
        seen["session"] = local.raw.query(SESSION_SQL[vendor])[0][0]
        opened.set()
        forked.wait()
        try:
            seen["raw_same_session"] = local.raw.query(SESSION_SQL[vendor])[0][0] == seen["session"]
            seen["raw_error"] = None
        except Exception as exc:
            seen["raw_error"] = f"{type(exc).__name__}: {exc}"
        local.raw.conn.close()
        checked.set()

    thread = threading.Thread(target=hold)
    thread.start()
    opened.wait()
    result = run_child(lambda: {})
    forked.set()
    checked.wait()
    thread.join()
    return {**result, **seen}


def parent_dies_child_lives(vendor: str, engine: str) -> Result:
    """The parent (here a child of the scenario) opens Django's connection
    through a driver without fileno() (ENGINE one of tests.backends': PyMySQL,
    mysql-connector), forks a child that lives on, and dies. Its session must
    end with it, not when the child ends."""
    monitor = setup(vendor, engine)
    assert monitor is not None
    release_read, release_write = os.pipe()
    report_read, report_write = os.pipe()
    parent_pid = os.fork()
    if parent_pid == 0:

        session = session_id()
        child_pid = os.fork()
        if child_pid == 0:  # Lives on until released, holding nothing but what it inherited.
            os.close(report_write)
            os.read(release_read, 1)
            os._exit(0)
        report = {"session": session, "child_pid": child_pid, "driver_classes": sorted(DRIVER_CLASSES)}
        os.write(report_write, json.dumps(report).encode())
        os._exit(0)  # No goodbye: the server learns of it from the socket alone.
    os.close(report_write)
    with os.fdopen(report_read) as pipe:
        report = json.loads(pipe.read())
    os.waitpid(parent_pid, 0)
    try:
        ended = monitor.session_ended(report["session"], seconds=10)
    finally:
        os.write(release_write, b"x")
    return {**report, "session_ended_with_parent": ended}


# The program lists its descriptors: number, kind, and whether it is a socket
# still connected (a dead end's peer is gone).
LIST_DESCRIPTORS = """
import json, os, socket
seen = {}
for name in sorted(os.listdir("/proc/self/fd"), key=int):
    target = os.readlink(f"/proc/self/fd/{name}") if os.path.exists(f"/proc/self/fd/{name}") else ""
    kind = target.split(":")[0]
    if kind == "socket":
        try:
            with socket.socket(fileno=os.dup(int(name))) as sock:
                kind += " " + str(sock.getpeername())
        except OSError as exc:
            kind += f" ({exc.strerror})"
    seen[name] = kind
print(json.dumps(seen))
"""


def subprocess_run(vendor: str, engine: str) -> Result:
    """subprocess.run() from a process with sessions open, both ways CPython
    makes the child: vfork (no at-fork handler runs) and fork (preexec_fn:
    the C handler, then Python's, run before exec). The programs see the same
    descriptors as under the plain ENGINE (close_fds=False too: every socket
    keeps its close-on-exec flag), and the parent keeps its sessions."""
    import subprocess
    import sys

    setup(vendor, engine)
    from django.db import connection

    session = session_id()
    raw = Monitor(vendor)
    raw_session = raw.query(SESSION_SQL[vendor])[0][0]
    result: Result = {}
    programs: dict[str, dict[str, Any]] = {
        "vfork": {},
        "fork": {"preexec_fn": lambda: None},
        "fork_close_fds_false": {"preexec_fn": lambda: None, "close_fds": False},
    }
    for name, options in programs.items():
        program = subprocess.run(
            [sys.executable, "-c", LIST_DESCRIPTORS], capture_output=True, text=True, check=True, **options
        )
        result[f"{name}_descriptors"] = json.loads(program.stdout)
    result["parent_same_session"] = session_id() == session
    result["raw_same_session"] = raw.query(SESSION_SQL[vendor])[0][0] == raw_session
    connection.close()
    raw.conn.close()
    return result
