"""
Connections whose server was not in the endpoint table at the fork: the
settings name it by a host name (recorded only from a connection's peer),
and that peer was not recorded yet (another thread forked between track()
and the recording) or could not be read the old way (os.dup() failing with
EMFILE: the connection took the last free descriptor). The child must
silence each such connection all the same, and the recording must not fail.

The moment is found with a profile function on the connecting thread (the
call of the peer's recording): no sleep, no code of ours replaced.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from django_forksafe.hazards import SESSION_SQL, Fork, child_report, fork_child, session_id
from tests import dbconfig
from tests.hazards.common import Monitor, Result, raw_session_kept, setup

# A profile function: sys.setprofile()'s, called with (frame, event, arg).
Profile = Callable[[FrameType, str, Any], None]


def _at_new_connection(engine: str, then: Callable[[Any], None]) -> Profile:
    """A profile function that runs `then(raw)` once, with a new raw
    connection: on the fork-safe ENGINE, as its peer is about to be recorded
    (the connection tracked already); on Django's own, as its
    get_new_connection() returns (the control)."""
    from django.db import connections

    if dbconfig.is_forksafe(engine):
        from django_forksafe import endpoints

        code, wanted = endpoints.remember_peer.__code__, "call"
    else:
        code, wanted = type(connections["default"]).get_new_connection.__code__, "return"

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == wanted and frame.f_code is code:
            sys.setprofile(None)
            then(frame.f_locals["raw"] if event == "call" else arg)

    return profile


def _inherited_socket_connected(local: Any) -> bool:
    """In the child: whether a descriptor still holds a connected socket
    with the parent's connection's local address (the parent's session)."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockname() == local:
                    sock.getpeername()  # A lost connection raises here.
                    return True
    return False


LOOPBACK_BY_NAME = "127.1"


def _host_named(vendor: str, engine: str) -> dict[str, Any]:
    # A name, not an address Python reads (ipaddress refuses it), that the C
    # library's resolver maps to 127.0.0.1 on any machine (inet_aton's short
    # form): as with a host name, the settings give no address to record. The
    # machine's own name would do only where /etc/hosts maps it to 127.0.0.1
    # (Debian's default is 127.0.1.1, where the servers do not listen).
    return {"default": dbconfig.database(vendor, engine, HOST=LOOPBACK_BY_NAME)}


def fork_between_track_and_peer(fork: Fork) -> Callable[[str, str], Result]:
    """Another thread connects Django to a host-named server; the main
    thread forks just as the new connection's peer is about to be recorded
    (the connection tracked, its server not in the table). The child queries
    through Django (its own session), and must hold no live copy of the
    parent's socket: once the parent lets its connection go without a word,
    the server ends the parent's session while the child lives on."""

    def scenario(vendor: str, engine: str) -> Result:
        monitor = setup(vendor, engine, DATABASES=_host_named(vendor, engine))
        assert monitor is not None
        at_window, forked, done = threading.Event(), threading.Event(), threading.Event()
        seen: dict[str, Any] = {}

        def pause(raw: Any) -> None:
            with socket.socket(fileno=os.dup(raw.fileno())) as sock:
                seen["local"] = sock.getsockname()
            seen["fd"] = raw.fileno()
            at_window.set()
            forked.wait()

        def connect() -> None:
            from django.db import connection

            sys.setprofile(_at_new_connection(engine, pause))
            try:
                seen["session"] = session_id()
            except Exception as exc:
                seen["error"] = f"{type(exc).__name__}: {exc}"
                return
            finally:
                sys.setprofile(None)
                at_window.set()  # Also when it failed before the window.
            done.wait()
            # Let go of the connection without a word: the number now holds
            # /dev/null, where the driver's goodbye goes.
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, seen["fd"])
            os.close(devnull)
            connection.close()

        thread = threading.Thread(target=connect)
        thread.start()
        at_window.wait()
        if "error" in seen:
            thread.join()
            raise RuntimeError(f"the thread could not connect: {seen['error']}")
        release_read, release_write = os.pipe()

        def work() -> Result:
            observations: Result = {"child_session": session_id()}
            observations["inherited_connected"] = _inherited_socket_connected(seen["local"])
            return observations

        def child_then_wait() -> Result:
            observations = work()
            # Reported; now live on, holding what was inherited, until released.
            os.write(report_write, b"x")
            os.read(release_read, 1)
            return observations

        report_read, report_write = os.pipe()
        pid, read_end = fork_child(child_then_wait, fork)
        forked.set()
        os.read(report_read, 1)  # The child has done its work and lives on.
        done.set()
        thread.join()
        try:
            ended = monitor.session_ended(seen["session"], seconds=10)
        finally:
            os.write(release_write, b"x")
        result = child_report(pid, read_end)
        for fd in (release_read, release_write, report_read, report_write):
            os.close(fd)
        result["parent_session"] = seen["session"]
        result["session_ended_with_parents_connection"] = ended
        return result

    return scenario


def connection_takes_last_descriptor(fork: Fork) -> Callable[[str, str], Result]:
    """Django connects to a host-named server with every other descriptor
    taken (RLIMIT_NOFILE): reading its peer through os.dup() fails with
    EMFILE. The server must be recorded all the same: a driver connection
    of the parent's own to it, opened next, is silenced in a child that
    queries through Django, then closes it (COM_QUIT / Terminate otherwise)."""

    def scenario(vendor: str, engine: str) -> Result:
        monitor = setup(vendor, engine, DATABASES=_host_named(vendor, engine))
        assert monitor is not None
        filler: list[int] = []

        def take_every_descriptor(raw: Any) -> None:
            with contextlib.suppress(OSError):
                while True:
                    filler.append(os.open(os.devnull, os.O_RDONLY))

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        sys.setprofile(_at_new_connection(engine, take_every_descriptor))
        try:
            session = session_id()
        finally:
            sys.setprofile(None)
            for fd in filler:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        raw = Monitor(vendor)  # To the same server, outside Django.
        raw_session = raw.query(SESSION_SQL[vendor])[0][0]

        def work() -> Result:
            # A checkout first: without the C extension, a fork behind
            # Python's back silences there (README's Limits).
            child_session = session_id()
            raw.conn.close()  # Sends COM_QUIT / Terminate, unless silenced.
            return {"child_session": child_session}

        result = child_report(*fork_child(work, fork))
        result["descriptors_were_exhausted"] = bool(filler)
        result.update(raw_session_kept(monitor, raw, raw_session))
        result["parent_same_session"] = session_id() == session
        raw.conn.close()
        return result

    return scenario
