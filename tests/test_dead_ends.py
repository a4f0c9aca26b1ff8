"""
What a child gets on an inherited database socket: a dead end, whatever made
the child (forks that run no at-fork handler at all: a raw fork system call,
glibc's _Fork()), which fails a write without a signal and a read or poll()
at once; and a fork handler whose system calls a signal interrupts still
looks at every descriptor. Each with the C extension and without it
(DJANGO_FORKSAFE_NATIVE=0) where both apply; Django's plain ENGINE is the
control.
"""

from __future__ import annotations

import ast
import ctypes
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from tests.utils import MECHANISMS, SERVERS, assert_kept_session, require_native, run, run_with, skip_or_fail

RAW_FORKS = pytest.mark.parametrize("fork", ["sys_fork", "glibc_fork", "libc_fork"])


def require_fork(fork: str) -> None:
    """Skip (fail in CI) where this machine cannot make that kind of fork."""
    if fork == "glibc_fork" and not hasattr(ctypes.CDLL(None), "_Fork"):
        skip_or_fail("needs glibc 2.34 or later (_Fork)")
    if fork == "sys_fork" and platform.machine() not in ("x86_64", "aarch64"):
        skip_or_fail(f"no raw fork system call known for {platform.machine()}")


def run_python(code: str, *args: str, prefix: Sequence[str] = (), **env: str) -> str:
    """`code` in a fresh interpreter (run by `prefix`, if given), which finds
    the tests through IMPORT_PATH and must exit 0: its output."""
    from tests import IMPORT_PATH

    process = subprocess.run(
        [*prefix, sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=IMPORT_PATH,
        env={**os.environ, "PYTHONPATH": IMPORT_PATH, **env},
    )
    assert process.returncode == 0, process.stderr
    return process.stdout


# A child made without the fork handler ------------------------------------


@MECHANISMS
@RAW_FORKS
@SERVERS
def test_child_without_fork_handler_silences_at_first_checkout(fork: str, vendor: str, native: str) -> None:
    """No handler ran in the child (the C extension's neither): it must not
    take its parent's "every socket silenced" for its own, and its first
    checkout silences every inherited database socket, the raw connection
    it then closes included."""
    require_fork(fork)
    result = run_with(f"{fork}_then_raw_connection", vendor, native=native)
    assert result["raw_error"] is None and result["raw_same_session"]
    assert result["raw_session_on_server"]
    assert result["child_session"] != result["parent_session"]
    assert_kept_session(result)
    if native == "1":
        # What the handler did in this process: nothing, where it did not run.
        silenced, complete = result["last_fork"]
        if fork == "libc_fork":
            assert complete and silenced >= 3  # Django's, the monitor's and the raw connection's.
        else:
            assert (silenced, complete) == (0, False)


@RAW_FORKS
@SERVERS
def test_control_child_without_fork_handler_ends_raw_session(fork: str, vendor: str) -> None:
    require_fork(fork)
    result = run(f"{fork}_then_raw_connection", vendor, "plain")
    assert result["raw_error"] is not None
    assert not result["raw_session_on_server"]


@MECHANISMS
def test_child_without_fork_handler_held_cursor_as_documented(native: str) -> None:
    """README's Limits: a fetch from a server-side cursor held across such a
    fork is checked without the C extension (an error), and not with it (it
    relies on its fork handler there): the parent's next rows."""
    result = run_with("sys_fork_held_server_side_cursor", "postgresql", native=native)
    if native == "1":
        assert result["child_rows"] == list(range(11, 21))
    else:
        assert result["child_rows"] is None and result["child_fetch_error"]
        assert result["parent_next_rows"] == list(range(11, 21))


GRANDCHILD = """
import ctypes, json, os
from django_forksafe.detection import NATIVE
from tests.hazards.dead_ends import RAW_FORKS
raw_fork = RAW_FORKS[os.environ["FORK"]]
reading, writing = os.pipe()
child = raw_fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        os.write(writing, json.dumps([os.getppid(), NATIVE.forked_from()]).encode())
        os._exit(0)
    os.waitpid(grandchild, 0)
    os._exit(0)
os.close(writing)
with os.fdopen(reading) as pipe:
    print(pipe.read())
os.waitpid(child, 0)
"""


@pytest.mark.parametrize("fork", ["sys_fork", "glibc_fork"])
def test_child_of_child_without_fork_handler_names_its_own_parent(fork: str) -> None:
    """post_fork's parent_pid in a grandchild (os.fork) of a child made
    without the handler: that child, not the grandparent."""
    import json

    require_native()
    require_fork(fork)
    parent, forked_from = json.loads(run_python(GRANDCHILD, FORK=fork))
    assert forked_from == parent


# A dead end raises no signal ----------------------------------------------


DEAD_END_CHILD = """
import errno, os, select, signal, socket, sys
from django_forksafe import endpoints, silencing
from django_forksafe.detection import NATIVE
from tests.hazards.dead_ends import RAW_FORKS
fork = RAW_FORKS.get(sys.argv[1], os.fork)
with socket.create_server(("127.0.0.1", 0)) as server:
    endpoints.remember_server("127.0.0.1", server.getsockname()[1])
    with socket.create_connection(server.getsockname()) as client:
        reading, writing = os.pipe()
        pid = fork()
        if pid == 0:
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            if NATIVE is None or sys.argv[1] != "fork":
                silencing.silence_inherited()  # The first checkout's, without a fork handler.
            seen = []
            for name, call in (
                ("write", lambda: os.write(client.fileno(), b"x")),
                ("send", lambda: client.send(b"x")),
            ):
                try:
                    seen.append((name, call()))
                except OSError as error:
                    seen.append((name, errno.errorcode[error.errno]))
            poller = select.poll()
            poller.register(client.fileno(), select.POLLIN)
            ready = poller.poll(60_000)  # Bounded: a live socket would never answer.
            seen.append(("poll", bool(ready and ready[0][1] & select.POLLHUP)))
            if ready:
                try:
                    seen.append(("read", os.read(client.fileno(), 1)))
                    client.setblocking(False)  # As drivers wait: end of file all the same, not EAGAIN.
                    seen.append(("recv", client.recv(1)))
                except OSError as error:
                    seen.append(("read", errno.errorcode[error.errno]))
            os.write(writing, repr(seen).encode())
            os._exit(0)
        os.close(writing)
        with os.fdopen(reading) as pipe:
            print(pipe.read())
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
"""


@MECHANISMS
@pytest.mark.parametrize("fork", ["fork", "libc_fork", "sys_fork"])
def test_dead_end_fails_writes_without_signal_and_reads_at_once(fork: str, native: str) -> None:
    """With SIGPIPE at SIG_DFL, a write or send on a silenced socket fails
    with EPIPE and no signal (a stream socket pair's closed end would kill
    the child; an unconnected socket's ENOTCONN is retried by OpenSSL), a
    read gets end of file, and poll() says POLLHUP at once: nothing waits on
    a dead end."""
    if native == "1":
        require_native()
    require_fork(fork)
    seen, status = run_python(DEAD_END_CHILD, fork, DJANGO_FORKSAFE_NATIVE=native).splitlines()
    assert status == "0"  # Not -13: no SIGPIPE.
    assert seen == repr([("write", "EPIPE"), ("send", "EPIPE"), ("poll", True), ("read", b""), ("recv", b"")])


SIGPIPE_ENGINES = pytest.mark.parametrize(
    ("vendor", "engine"), [("mysql", "forksafe"), ("postgresql", "forksafe"), ("mysql", "pymysql-forksafe")]
)


@MECHANISMS
@pytest.mark.parametrize("fork", ["fork", "libc_fork"])
@SIGPIPE_ENGINES
def test_query_on_silenced_connection_with_default_sigpipe_is_an_error(
    fork: str, vendor: str, engine: str, native: str
) -> None:
    """mysqlclient, psycopg (libpq) and PyMySQL (Python's socket) on an
    inherited driver connection, in a child with SIGPIPE at SIG_DFL: a
    database error, not death."""
    result = run_with(f"{fork}_write_with_default_sigpipe", vendor, engine, native=native)
    assert result.get("child_error") is None and result["child_exit_status"] == 0, result
    assert result["raw_query_error"] is not None
    assert result["raw_same_session"]
    assert_kept_session(result)


@SIGPIPE_ENGINES
def test_control_query_on_inherited_connection_runs_on_parent_session(vendor: str, engine: str) -> None:
    unwrapped = "plain" if engine == "forksafe" else engine.removesuffix("-forksafe")
    result = run("fork_write_with_default_sigpipe", vendor, unwrapped)
    assert result["raw_query_error"] is None  # Answered on the parent's session.


# A fork handler interrupted by a signal -----------------------------------


INTERRUPTED_CHILD = """
import os, socket
from django_forksafe import endpoints
from django_forksafe.detection import NATIVE
with socket.create_server(("127.0.0.1", 0)) as server:
    endpoints.remember_server("127.0.0.1", server.getsockname()[1])
    with socket.create_connection(server.getsockname()) as client:
        reading, writing = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                peer = repr(client.getpeername())  # The dead end's: unnamed.
            except OSError as error:
                peer = error.strerror
            os.write(writing, repr((os.getpid(), NATIVE.last_fork(), peer)).encode())
            os._exit(0)
        os.close(writing)
        with os.fdopen(reading) as pipe:
            print(pipe.read())
        os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("call", ["poll", "pselect6"])
def test_fork_handler_retries_interrupted_calls(call: str, tmp_path: Any) -> None:
    """The handler's first poll() (the descriptors it looks at) or select()
    (where the descriptor table ends) fails with EINTR, as when a signal
    handler runs meanwhile: strace makes the kernel answer so, in the child
    only (the first such call of each process; Python retries its own). The
    handler tries again: every descriptor looked at, the socket silenced,
    and no fallback to /proc/self/status."""
    require_native()
    if shutil.which("strace") is None:
        skip_or_fail("needs strace (to make the kernel interrupt a system call)")
    trace = tmp_path / "trace"
    # Traced, or strace injects nothing.
    injection = ["-e", f"trace=openat,{call}", "-e", f"inject={call}:error=EINTR:when=1"]
    strace = ["strace", "-f", "-qq", "-o", str(trace), *injection]
    child, last_fork, peer = ast.literal_eval(run_python(INTERRUPTED_CHILD, prefix=strace))
    assert (last_fork, peer) == ((1, True), "''")
    child_calls = [line for line in trace.read_text().splitlines() if line.startswith(f"{child} ")]
    assert [line for line in child_calls if "(INJECTED)" in line]  # The premise.
    assert not [line for line in child_calls if "/proc/self/status" in line]
