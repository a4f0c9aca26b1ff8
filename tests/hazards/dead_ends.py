"""
What a child gets on an inherited socket: a dead end, whatever made the
child (forks that run no at-fork handler at all: a raw fork system call,
glibc's _Fork()), and one that raises no signal on a write.
"""

from __future__ import annotations

import ctypes
import platform
import signal
from collections.abc import Callable

from django_forksafe.hazards import SESSION_SQL, Fork, libc_fork, run_child, session_id
from tests.hazards.common import Monitor, Result, parent_of, raw_session_kept, setup

# The fork system call's number, where the architecture has one; elsewhere
# clone() with SIGCHLD alone is the same call.
_SYS_FORK = {"x86_64": 57}
_SYS_CLONE = {"aarch64": 220}


def sys_fork() -> int:
    """fork(2) made with syscall(): neither the C library's handlers (the C
    extension's) nor Python's run in the child. PyDLL keeps the GIL."""
    libc = ctypes.PyDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    machine = platform.machine()
    if machine in _SYS_FORK:
        return int(libc.syscall(ctypes.c_long(_SYS_FORK[machine])))
    if machine in _SYS_CLONE:
        flags = ctypes.c_long(signal.SIGCHLD)
        return int(libc.syscall(ctypes.c_long(_SYS_CLONE[machine]), flags, None, None, None, None))
    raise NotImplementedError(f"no raw fork system call known for {machine}")


def glibc_fork() -> int:
    """glibc's _Fork() (2.34 and later): fork without any at-fork handler."""
    return int(ctypes.PyDLL(None)._Fork())


RAW_FORKS: dict[str, Fork] = {"libc_fork": libc_fork, "sys_fork": sys_fork, "glibc_fork": glibc_fork}


def _with_raw_connection(vendor: str, engine: str, fork: Fork, work: Callable[[Monitor], Result]) -> Result:
    """The parent holds Django's connection and a driver connection of its
    own (the monitor's kind) to the same server; a child made by `fork` runs
    `work(raw)`. Then: the parent's sessions, Django's and the raw one."""
    monitor = setup(vendor, engine)
    assert monitor is not None
    parent = parent_of(monitor)
    raw = Monitor(vendor)
    raw_session = raw.query(SESSION_SQL[vendor])[0][0]
    result = {**run_child(lambda: work(raw), fork), **parent.check()}
    result.update(raw_session_kept(monitor, raw, raw_session))
    raw.conn.close()
    return result


def raw_fork_then_raw_connection(fork: Fork) -> Callable[[str, str], Result]:
    """A child made by `fork` queries through Django first (its first
    checkout), then closes the raw connection it inherited: COM_QUIT /
    Terminate on the parent's session, unless that socket is silenced."""

    def work(raw: Monitor) -> Result:
        from django_forksafe.detection import NATIVE

        child_session = session_id()  # The first checkout: invalidation.
        last_fork = list(NATIVE.last_fork()) if NATIVE is not None else None
        raw.conn.close()  # Sends COM_QUIT / Terminate, unless silenced.
        return {"child_session": child_session, "last_fork": last_fork}

    return lambda vendor, engine: _with_raw_connection(vendor, engine, fork, work)


def write_with_default_sigpipe(fork: Fork) -> Callable[[str, str], Result]:
    """A child (made by `fork`) that sets SIGPIPE to SIG_DFL, as command-line
    programs do, queries through Django, then on the driver connection it
    inherited (mysqlclient, psycopg, or PyMySQL's Python socket with ENGINE
    pymysql-forksafe): a database error, not death by SIGPIPE."""

    def work(raw: Monitor) -> Result:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        session_id()  # A first checkout: without a fork handler, the silencing's moment.
        try:
            raw.query("SELECT 1")
        except Exception as exc:
            return {"raw_query_error": f"{type(exc).__name__}: {exc}"}
        return {"raw_query_error": None}

    return lambda vendor, engine: _with_raw_connection(vendor, engine, fork, work)
