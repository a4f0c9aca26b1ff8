"""
Django's state in a child, used before any checkout, and what a review found
around the at-fork moment (tests.hazards.state and tests.hazards.robustness),
each with Django's plain ENGINE as the control. Forks through os.fork() and
through libc (no at-fork handler: uWSGI, C extensions). Each runs with the
C extension and without it (DJANGO_FORKSAFE_NATIVE=0).
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.utils import LOST_SESSION, MECHANISMS, SERVERS, assert_kept_session, require_native, run, run_with

FORKS = pytest.mark.parametrize("fork", ["", "libc_fork_"])
def test_c_extension_built() -> None:
    # Where it can be (Linux, CPython, a compiler), the wheel carries it; in
    # CI, where there is a compiler, its absence fails.
    require_native()
    assert importlib.util.find_spec("django_forksafe._native") is not None


@MECHANISMS
@FORKS
@pytest.mark.parametrize("vendor", ["mysql", "postgresql", "sqlite3"])
def test_held_cursor_never_reaches_parent(fork: str, vendor: str, native: str) -> None:
    result = run_with(f"{fork}held_cursor", vendor, native=native)
    assert result["held_cursor_error"] is not None
    assert result["held_cursor_answer"] is None
    assert result["child_session"] != result["parent_session"]
    assert result["parent_error"] is None and result["parent_same_session"]
    if vendor != "sqlite3":
        assert_kept_session(result)


@FORKS
@pytest.mark.parametrize("vendor", ["mysql", "postgresql", "sqlite3"])
def test_control_held_cursor_runs_on_parent_session(fork: str, vendor: str) -> None:
    result = run(f"{fork}held_cursor", vendor, "plain")
    assert result["held_cursor_error"] is None
    expected = result["parent_session"] if vendor != "sqlite3" else 42  # SQLite: the parent's TEMPORARY table.
    assert result["held_cursor_answer"] == expected


@MECHANISMS
@FORKS
def test_held_server_side_cursor_never_fetches_from_parent(fork: str, native: str) -> None:
    result = run_with(f"{fork}held_server_side_cursor", "postgresql", native=native)
    assert result["child_rows"] is None and result["child_fetch_error"]
    assert result["parent_next_rows"] == list(range(11, 21))
    assert_kept_session(result)


@FORKS
def test_control_held_server_side_cursor_fetches_parents_rows(fork: str) -> None:
    result = run(f"{fork}held_server_side_cursor", "postgresql", "plain")
    assert result["child_rows"] == list(range(11, 21))
    assert result["parent_next_rows"] == list(range(21, 31))


@MECHANISMS
@FORKS
@SERVERS
def test_ensure_connection_then_raw_connection_is_childs_own(fork: str, vendor: str, native: str) -> None:
    result = run_with(f"{fork}ensure_connection_then_raw", vendor, native=native)
    assert result["raw_session"] != result["parent_session"]
    assert_kept_session(result)


@FORKS
@SERVERS
def test_control_ensure_connection_then_raw_connection_is_parents(fork: str, vendor: str) -> None:
    result = run(f"{fork}ensure_connection_then_raw", vendor, "plain")
    assert result["raw_session"] == result["parent_session"]


@MECHANISMS
@FORKS
def test_close_pool_in_child_keeps_parents_pool(fork: str, native: str) -> None:
    result = run_with(f"{fork}close_pool", "postgresql", native=native)
    assert result["child_session"] not in result["parent_pool"]
    assert result["parent_errors"] == []
    assert result["parent_pool_after"] == result["parent_pool"]


@FORKS
def test_control_close_pool_in_child_closes_parents_pool(fork: str) -> None:
    result = run(f"{fork}close_pool", "postgresql", "plain")
    assert result["parent_errors"], result
    assert any(message in error for error in result["parent_errors"] for message in LOST_SESSION)


@MECHANISMS
@FORKS
@SERVERS
def test_atomic_in_child_is_its_own_transaction(fork: str, vendor: str, native: str) -> None:
    result = run_with(f"{fork}atomic_in_child", vendor, native=native)
    assert result["child_rollback_error"] is None and result["child_commit_error"] is None
    assert result["child_on_commit_ran"] == [8]
    # 7 rolled back with the child's block, 1 with the parent's transaction.
    assert result["committed"] == result["committed_on_server"] == [8]


@FORKS
@SERVERS
def test_control_atomic_in_child_is_a_savepoint_of_parents_transaction(fork: str, vendor: str) -> None:
    result = run(f"{fork}atomic_in_child", vendor, "plain")
    assert result["child_on_commit_ran"] == []  # Queued on the parent's transaction.
    assert 8 not in result["committed_on_server"]  # Rolled back with the parent's.


@MECHANISMS
@FORKS
def test_sqlite_child_forked_inside_transaction_told_why_it_cannot_write(fork: str, native: str) -> None:
    result = run_with(f"{fork}sqlite_forked_in_transaction", "sqlite3", native=native)
    # The parent's transaction is left alone (its journal, then its commit),
    # and its cursor refuses to run in the child.
    assert result["parent_journal_kept"] is True
    assert result["parent_commit_error"] is None
    assert result["child_held_cursor_error"] == "DatabaseError: not authorized"
    assert result["child_read"] == [1]
    assert "forked while its parent held a transaction" in result["child_write_error"]
    assert result["parent_rows"] == [1, 2]


@FORKS
def test_control_sqlite_child_writes_inside_parents_transaction(fork: str) -> None:
    # Through the inherited handle: the child's write joins the parent's transaction.
    result = run(f"{fork}sqlite_forked_in_transaction", "sqlite3", "plain")
    assert result["child_held_cursor_error"] is None
    assert result["child_write_error"] is None


@MECHANISMS
@SERVERS
def test_hook_registered_before_ours_keeps_its_session(vendor: str, native: str) -> None:
    result = run_with("hook_before_ours", vendor, native=native)
    assert "hook_error" not in result
    assert result["hook_session"] != result["parent_session"]
    assert result["later_error"] is None
    assert result["later_session"] == result["hook_session"]
    assert_kept_session(result)


@SERVERS
def test_control_hook_registered_before_ours_runs_on_parent_session(vendor: str) -> None:
    result = run("hook_before_ours", vendor, "plain")
    assert result["hook_session"] == result["parent_session"]


@SERVERS
def test_libc_forked_childs_own_raw_connection_survives_first_checkout(vendor: str) -> None:
    # Inside fork() only inherited sockets exist: the C extension never
    # touches one the child opens. (Without it, see README's Limits.)
    require_native()
    result = run_with("libc_fork_own_raw_connection_first", vendor)
    assert result["own_error"] is None and result["own_same_session"]
    assert result["django_session"] != result["parent_session"]
    assert_kept_session(result)


@MECHANISMS
def test_signal_handler_during_invalidation_never_closes_inherited_handle(native: str) -> None:
    result = run_with("signal_during_invalidation", "sqlite3", native=native)
    assert result["lines_tried"] > 20  # The handler landed all through the work.
    assert result["journal_lost_after_landing_at"] is None
    assert result["parent_commit_error"] is None
    assert result["committed_rows"] == 1


def test_control_signal_handler_closes_inherited_handle() -> None:
    result = run("signal_during_invalidation", "sqlite3", "plain")
    assert result["journal_lost_after_landing_at"] == 1
    assert "disk I/O error" in result["parent_commit_error"]


@MECHANISMS
def test_pool_close_returns_never_hangs_child(native: str) -> None:
    result = run_with("pool_close_returns", "postgresql", native=native)
    assert result["child_session"] != result["parent_session"]
    assert_kept_session(result)


def test_control_pool_close_returns_hangs_child() -> None:
    result = run("pool_close_returns", "postgresql", "plain", allow_child_error=True)
    assert result["child_error"].startswith("hung")


ENDPOINTS = [
    ("raw_connection_to_hostname", "mysql", "pymysql"),
    ("raw_connection_to_socket", "mysql", "pymysql"),
    ("raw_connection_to_socket", "mysql", "plain"),
    ("raw_connection_to_hosts", "postgresql", "plain"),
]


@MECHANISMS
@pytest.mark.parametrize(("scenario", "vendor", "control"), ENDPOINTS)
def test_endpoints_every_way_settings_name_them(scenario: str, vendor: str, control: str, native: str) -> None:
    engine = "forksafe" if control == "plain" else f"{control}-forksafe"
    result = run_with(scenario, vendor, engine, native=native)
    assert result["raw_error"] is None and result["raw_same_session"]
    assert result["raw_session_on_server"]


@pytest.mark.parametrize(("scenario", "vendor", "control"), ENDPOINTS)
def test_control_endpoints_raw_connection_closed_by_child(scenario: str, vendor: str, control: str) -> None:
    result = run(scenario, vendor, control)
    assert any(message in result["raw_error"] for message in LOST_SESSION), result
    assert not result["raw_session_on_server"]


def test_c_scan_reaches_every_descriptor_number() -> None:
    """The fork handler's bound on descriptor numbers (select()'s probe of the
    table's end, /proc/self/status above 8192) lies above every inherited
    socket, whatever its number; neither the limit on open descriptors
    lowered below it nor an O_PATH descriptor at a probed number (which
    select() before Linux 5.17 skipped) stops the scan: each is dead (or,
    above that limit, closed) in the child before it runs."""
    import errno
    import os
    import resource
    import socket

    from django_forksafe import endpoints
    from django_forksafe.detection import NATIVE

    require_native()
    assert NATIVE is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    numbers = [n for n in (63, 64, 65, 200, 256, 300, 1000, 5000, 8192, 8193, 12000) if n < soft]
    with socket.create_server(("127.0.0.1", 0)) as server:
        endpoints.remember_server("127.0.0.1", server.getsockname()[1])
        with socket.create_connection(server.getsockname()) as client:
            # An O_PATH descriptor at a number the bound is probed at: poll()
            # says POLLNVAL for it, yet it is open (and the table goes on).
            path_only = os.open("/", os.O_PATH)
            cases = [*((n, None, None) for n in numbers), (200, 100, None), (300, None, 128)]
            for number, lowered_limit, path_only_at in cases:
                os.dup2(client.fileno(), number, inheritable=False)
                if path_only_at:
                    os.dup2(path_only, path_only_at, inheritable=False)
                reading, writing = os.pipe()
                if lowered_limit:
                    # Descriptors above the limit stay open, and poll()
                    # refuses to look at more descriptors than it allows.
                    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered_limit, hard))
                try:
                    pid = os.fork()
                finally:
                    if lowered_limit:
                        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                if pid == 0:  # pragma: no cover (the child)
                    try:
                        try:
                            with socket.socket(fileno=os.dup(number)) as inherited:
                                peer = inherited.getpeername()
                        except OSError as error:
                            peer = errno.errorcode[error.errno or 0]
                        silenced, complete = NATIVE.last_fork()
                        os.write(writing, repr((peer, silenced >= 2, complete)).encode())
                    finally:
                        os._exit(0)
                os.close(writing)
                with os.fdopen(reading) as report:
                    seen = report.read()
                os.waitpid(pid, 0)
                os.close(number)
                if path_only_at:
                    os.close(path_only_at)
                # An unnamed Unix socket (the dead end) where the connection
                # was; above a lowered limit, where nothing can be put, none.
                assert seen == repr(("EBADF" if lowered_limit else "", True, True)), (number, seen)
            os.close(path_only)


NO_PROC_CHILD = """
import os, socket
from django_forksafe import endpoints
from django_forksafe.detection import NATIVE
assert not os.listdir("/proc")
with socket.create_server(("127.0.0.1", 0)) as server:
    endpoints.remember_server("127.0.0.1", server.getsockname()[1])
    with socket.create_connection(server.getsockname()) as client:
        pid = os.fork()
        if pid == 0:
            with socket.socket(fileno=os.dup(client.fileno())) as inherited:
                print(NATIVE.last_fork(), repr(inherited.getpeername()), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
"""


def test_c_scan_needs_no_proc() -> None:
    """Below 8192 descriptors the fork handler needs no /proc (a chroot or a
    container without it): here /proc is an empty tmpfs, in a mount
    namespace of the test's own (root and util-linux's unshare)."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.utils import skip_or_fail

    require_native()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        skip_or_fail("needs root and unshare (util-linux) for a mount namespace without /proc")
    script = f"mount -t tmpfs none /proc && exec {sys.executable} -c '{NO_PROC_CHILD}'"
    # From /: the installed package, not the source tree's.
    process = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert process.returncode == 0, process.stderr
    # Complete, one silenced: the inherited socket is the dead end (its peer unnamed).
    assert process.stdout == "(1, True) ''\n", process.stdout


LOWERED_LIMIT_CHILD = """
import os, resource, socket
from django_forksafe import endpoints
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
with socket.create_server(("127.0.0.1", 0)) as server:
    endpoints.remember_server("127.0.0.1", server.getsockname()[1])
    with socket.create_connection(server.getsockname()) as client:
        os.dup2(client.fileno(), 200, inheritable=False)
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))
        pid = os.fork()
        if pid == 0:
            try:
                os.fstat(200)
                print("open", flush=True)
            except OSError:
                print("closed", flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
"""


@MECHANISMS
def test_scan_above_a_lowered_descriptor_limit(native: str) -> None:
    """A database socket above RLIMIT_NOFILE (lowered after it was opened)
    cannot be replaced by a dead end: the child's copy is closed instead."""
    import os
    import subprocess
    import sys

    if native == "1":
        require_native()
    process = subprocess.run(
        [sys.executable, "-c", LOWERED_LIMIT_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",  # The installed package, not the source tree's.
        env={**os.environ, "DJANGO_FORKSAFE_NATIVE": native},
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout == "closed\n", process.stderr


@MECHANISMS
@pytest.mark.parametrize("case", ["", "libc_fork_", "libc_fork_closed_first"])
@SERVERS
def test_connection_above_a_lowered_descriptor_limit_let_go_quietly(case: str, vendor: str, native: str) -> None:
    """Django's connection above RLIMIT_NOFILE (lowered after it was opened):
    the child lets it go without an error in the log, and connects anew,
    also when it has closed that descriptor itself first."""
    fork, closed_first = case.partition("closed_first")[:2]
    scenario = f"{fork}connection_above_lowered_limit{'_closed_first' if closed_first else ''}"
    result = run_with(scenario, vendor, native=native)
    assert result["descriptor_above_limit"]  # The scenario's premise.
    assert result["logged"] == []
    assert result["child_session"] != result["parent_session"]
    assert result["connection_created_in_child"]
    assert_kept_session(result)


@SERVERS
def test_control_connection_above_a_lowered_descriptor_limit_is_parents(vendor: str) -> None:
    result = run("connection_above_lowered_limit", vendor, "plain")
    assert result["child_session"] == result["parent_session"]


@MECHANISMS
@FORKS
@SERVERS
def test_forked_out_of_descriptors_parent_keeps_its_sessions(fork: str, vendor: str, native: str) -> None:
    result = run_with(f"{fork}forked_out_of_descriptors", vendor, native=native)
    assert result["outside_same_session"] is True
    assert_kept_session(result)


@FORKS
def test_control_forked_out_of_descriptors_child_ends_parents_sessions(fork: str) -> None:
    # psycopg sends nothing from its deallocator, so only MySQL has a control.
    result = run(f"{fork}forked_out_of_descriptors", "mysql", "plain")
    assert result["outside_same_session"] is not True


@MECHANISMS
@SERVERS
def test_descriptor_reused_by_child_left_alone(vendor: str, native: str) -> None:
    result = run_with("libc_fork_descriptor_reused_by_child", vendor, native=native)
    assert result["own_file"] == "before\nafter\n"
    assert result["write_error"] is None
    assert result["query_error"] is None
    assert result["connection_created_in_child"] is True
    assert_kept_session(result)


@SERVERS
def test_control_descriptor_reused_by_child_gets_the_query(vendor: str) -> None:
    result = run("libc_fork_descriptor_reused_by_child", vendor, "plain")
    assert result["query_error"] is not None  # Run on the parent's connection, whose number holds the file.


@MECHANISMS
@SERVERS
def test_exit_during_invalidation_never_frees_an_inherited_connection(vendor: str, native: str) -> None:
    """A SystemExit (gunicorn's SIGQUIT handler) between any two lines of a
    child's invalidation, then the interpreter's exit: no driver's goodbye."""
    result = run_with("exit_signal_during_invalidation", vendor, native=native)
    assert "child_error" not in result, result.get("child_error")
    assert result["lines_tried"] > 20  # The exit landed all through the work.
    assert result["parent_lost_after_landing_at"] is None
    assert_kept_session(result)


def test_control_exit_frees_parents_connection() -> None:
    # psycopg sends nothing from its deallocator, so only MySQL has a control.
    result = run("exit_signal_during_invalidation", "mysql", "plain")
    assert result["parent_lost_after_landing_at"] == 1


# A lock a thread of the parent waits on, released by a child forked through
# libc: on CPython 3.13 and later the waiting thread's entry in CPython's
# parking lot outlives the fork, and from 3.14 a release hands the lock to
# that thread (it waited over 1 ms: CPython's fairness rule), which does not
# exist in the child: the child can never take it again. os.fork() clears
# the parking lot; the C extension's fork handler does the same for every
# child. Prints whether the child took the lock again.
LOCK_A_PARENT_THREAD_WAITED_ON = r"""
import ctypes, json, os, platform, threading, time
import django_forksafe.detection
FUTEX = {"x86_64": 202, "aarch64": 98}[platform.machine()]
lock = threading.Lock()
lock.acquire()
started = threading.Event()
def wait_for_the_lock():
    started.set()
    lock.acquire()
waiting = threading.Thread(target=wait_for_the_lock, daemon=True)
waiting.start()
started.wait()
def parked():  # Asleep in the kernel on a futex: parked, no longer spinning.
    with open(f"/proc/self/task/{waiting.native_id}/syscall") as status:
        return status.read().split()[0] == str(FUTEX)
while not parked():
    time.sleep(0.001)
since = time.monotonic()
while time.monotonic() < since + 0.005:  # Past CPython's 1 ms: a release hands the lock over.
    time.sleep(0.001)
read_end, write_end = os.pipe()
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    lock.release()
    os.write(write_end, b"1" if lock.acquire(timeout=2) else b"0")
    os._exit(0)
os.close(write_end)
took = os.read(read_end, 1) == b"1"
os.waitpid(pid, 0)
print(json.dumps({"child_took_the_lock": took}))
"""


def child_takes_a_lock_a_parent_thread_waited_on(native: str) -> bool:
    import json
    import os
    import platform
    import subprocess
    import sys

    from tests import IMPORT_PATH

    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("the futex system call's number is known here for x86_64 and aarch64 only")
    process = subprocess.run(
        [sys.executable, "-c", LOCK_A_PARENT_THREAD_WAITED_ON],
        capture_output=True, text=True, timeout=60, cwd=IMPORT_PATH,
        env={**os.environ, "DJANGO_FORKSAFE_NATIVE": native},
    )
    assert process.returncode == 0, process.stderr
    return bool(json.loads(process.stdout.strip().splitlines()[-1])["child_took_the_lock"])


def test_child_forked_behind_pythons_back_takes_a_lock_a_parent_thread_waited_on() -> None:
    require_native()
    assert child_takes_a_lock_a_parent_thread_waited_on("1")


def test_control_child_forked_behind_pythons_back_cannot_take_a_lock_a_parent_thread_waited_on() -> None:
    import sys

    if sys.version_info < (3, 14):
        pytest.skip("from CPython 3.14 a release hands the lock to the parked thread (3.13.0 does not show it here)")
    assert not child_takes_a_lock_a_parent_thread_waited_on("0")
