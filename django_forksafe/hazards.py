"""
The fork hazards, tried for real on one database alias: a process with an
open connection forks, the child does what children do, and the parent looks
at its own session afterwards.

The cache hazards (a memcached alias) follow the database ones. One library
for ``manage.py forksafe_check`` (through probe, which turns the
observations into a verdict) and for the test suite (which asserts on the
same observations, and checks the server side as well). Each hazard returns
observations, a JSON-able dict:

* ``parent_error``: the parent's next query failed (None if it did not);
* ``parent_same_session``, ``parent_same_raw``, ``parent_probe``: it still
  ran on its own server session, raw connection, and could read the
  TEMPORARY table (value 42) only that session sees;
* ``parent_session_on_server``: whether the server still lists the
  parent's session, asked on a session of its own (``server_lists()``, or
  the test suite's monitor outside Django);
* ``child_error``, ``child_touched_inherited``, ``child_session`` (the
  session the child got for its own use) and what the hazard adds.

Each hazard takes the fork to use: ``os.fork`` (Python's at-fork handlers
run) or ``libc_fork`` (they do not, as in uWSGI's workers and C extensions).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

Observations = dict[str, Any]
Fork = Callable[[], int]

SESSION_SQL = {"mysql": "SELECT CONNECTION_ID()", "postgresql": "SELECT pg_backend_pid()"}
# Whether the server lists a session (by its SESSION_SQL id), from any session.
SESSION_LISTED_SQL = {
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
    "postgresql": "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = %s",
}
PROBE_VALUE = 42


def libc_fork() -> int:
    """fork() as uWSGI and C extensions call it: Python's at-fork handlers do not run."""
    # PyDLL keeps the GIL across the call, so the child does not inherit a GIL
    # held by a thread that no longer exists.
    return ctypes.PyDLL(None).fork()  # type: ignore[no-any-return]


def fork_child(work: Callable[[], Observations], fork: Fork = os.fork, go: int | None = None) -> tuple[int, int]:
    """Fork; the child (once it reads a byte from `go`, if given) runs `work`,
    writes its observations down a pipe and leaves without interpreter
    finalisation. Returns (pid, the pipe's read end)."""
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:
        os.close(read_end)
        try:
            if go is not None:
                os.read(go, 1)
            observations = work()
        except BaseException as exc:  # Reported to the parent.
            observations = {"child_error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(observations).encode())
        os._exit(0)
    os.close(write_end)
    return pid, read_end


def child_report(pid: int, read_end: int, timeout: float = 60.0) -> Observations:
    """The child's observations, or that it hung (then it is killed) or died."""
    ready, _, _ = select.select([read_end], [], [], timeout)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        return {"child_error": f"hung: no report within {timeout:g} s"}
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    observations: Observations = json.loads(data) if data else {"child_error": "the child died"}
    observations["child_exit_status"] = os.waitstatus_to_exitcode(status)
    return observations


def run_child(work: Callable[[], Observations], fork: Fork = os.fork) -> Observations:
    return child_report(*fork_child(work, fork))


def connection(alias: str) -> Any:
    from django.db import connections

    return connections[alias]


def session_id(alias: str = "default") -> int:
    """The server's id of the alias's session (a handle's id for SQLite)."""
    wrapper = connection(alias)
    if wrapper.vendor not in SESSION_SQL:
        wrapper.ensure_connection()
        return id(wrapper.connection)
    with wrapper.cursor() as cursor:
        cursor.execute(SESSION_SQL[wrapper.vendor])
        return int(cursor.fetchone()[0])


def server_lists(alias: str) -> Callable[[int], bool] | None:
    """Parent's `on_server` for the diagnostic: whether the server still lists
    a session, asked on a session opened for the question and closed after it
    (never one a child could inherit). None for SQLite."""
    vendor = connection(alias).vendor
    if vendor not in SESSION_LISTED_SQL:
        return None

    def listed(session: int) -> bool:
        from django.db import connections

        asking = connections.create_connection(alias)
        try:
            with asking.cursor() as cursor:
                cursor.execute(SESSION_LISTED_SQL[vendor], [session])
                return bool(cursor.fetchone()[0])
        finally:
            asking.close()

    return listed


def own_session(alias: str = "default", first: Callable[[], object] = lambda: None) -> Observations:
    """In a child, after `first`: the session its own query ran on, and
    whether it opened that session itself."""
    from django.db.backends.signals import connection_created

    created: list[int] = []

    def record(**kwargs: Any) -> None:
        created.append(os.getpid())

    connection_created.connect(record, weak=False)
    try:
        first()
        return {"child_session": session_id(alias), "connection_created_in_child": created == [os.getpid()]}
    finally:
        connection_created.disconnect(record)


class Parent:
    """
    The parent's session as it was before the fork: its id, its raw
    connection's id and a TEMPORARY table only it can see. No reference to
    the raw connection is kept (but SQLite's, to trace its use), so that what
    frees a connection in a child is not hidden.
    """

    def __init__(self, alias: str = "default", on_server: Callable[[int], bool] | None = None) -> None:
        self.alias = alias
        self.on_server = on_server
        with connection(alias).cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE forksafe_probe (v INTEGER)")
            cursor.execute(f"INSERT INTO forksafe_probe VALUES ({PROBE_VALUE})")
        self.session_id = session_id(alias)
        self.raw_id = id(connection(alias).connection)
        self.statements: list[str] = []
        self.sqlite_raw = None
        if connection(alias).vendor == "sqlite":
            # SQLite's hazard is the child using or closing the parent's handle.
            self.sqlite_raw = connection(alias).connection
            self.sqlite_raw.set_trace_callback(self.statements.append)

    def before_fork(self) -> None:
        self.statements.clear()  # The child's copy then records only its own use.

    def child_touched_inherited(self) -> bool:
        """In the child: did it use or close the SQLite handle it inherited?"""
        if self.sqlite_raw is None:
            return False
        try:
            self.sqlite_raw.total_changes  # noqa: B018 - raises once the handle is closed
        except Exception:
            return True
        return bool(self.statements)

    def check(self) -> Observations:
        """Whether the parent still has its own session, seen both ways."""
        observations: Observations = {"parent_error": None, "parent_session": self.session_id}
        try:
            with connection(self.alias).cursor() as cursor:
                cursor.execute("SELECT v FROM forksafe_probe")
                observations["parent_probe"] = cursor.fetchone()[0]
            observations["parent_same_session"] = session_id(self.alias) == self.session_id
        except Exception as exc:
            observations["parent_error"] = f"{type(exc).__name__}: {exc}"
        observations["parent_same_raw"] = id(connection(self.alias).connection) == self.raw_id
        if self.on_server is not None:
            listed = self.on_server(self.session_id)
            # A server ends the session of a client it lost asynchronously:
            # once the parent has seen it lost, the server is given a moment.
            deadline = time.monotonic() + 5
            while listed and observations["parent_error"] is not None and time.monotonic() < deadline:
                time.sleep(0.05)  # Polling the server, bounded.
                listed = self.on_server(self.session_id)
            observations["parent_session_on_server"] = listed
        return observations


def close_all(alias: str) -> None:
    """What a child does first to let go of what it inherited (Celery's
    fixup, a multiprocessing initializer, a daemonizing script)."""
    from django.db import connections

    connections.close_all()


def child_closes(parent: Parent, cleanup: Callable[[str], None] = close_all, fork: Fork = os.fork) -> Observations:
    """The child lets go of the inherited connection, then uses the database."""

    def work() -> Observations:
        cleanup(parent.alias)
        touched = parent.child_touched_inherited()
        return {"child_touched_inherited": touched, **own_session(parent.alias)}

    parent.before_fork()
    return {**run_child(work, fork), **parent.check()}


def child_exits(parent: Parent, fork: Fork = os.fork) -> Observations:
    """The child ends through sys.exit(): interpreter finalisation frees
    what it holds. Through libc, nothing told the child that it is one."""
    pid = fork()
    if pid == 0:
        sys.exit(0)  # No try/finally on this path: the child unwinds it.
    _, status = os.waitpid(pid, 0)
    return {"child_exit_status": os.waitstatus_to_exitcode(status), **parent.check()}


def concurrent_use(parent: Parent, children: int = 3, rounds: int = 100, fork: Fork = os.fork) -> Observations:
    """The parent and its children query at once; every reply must be the
    one asked for, from the process's own session."""
    vendor = connection(parent.alias).vendor
    session_sql = SESSION_SQL.get(vendor, "SELECT 0")

    def queries() -> Observations:
        wrapper, wrong, sessions = connection(parent.alias), 0, set()
        for i in range(rounds):
            token = f"{os.getpid()}-{i}"
            with wrapper.cursor() as cursor:
                cursor.execute(f"SELECT %s, ({session_sql})", [token])
                reply, session = cursor.fetchone()
            wrong += reply != token
            sessions.add(int(session))
        return {
            "wrong_replies": wrong,
            "sessions": sorted(sessions),
            "child_touched_inherited": parent.child_touched_inherited(),
        }

    go_read, go_write = os.pipe()
    parent.before_fork()
    forked = [fork_child(queries, fork, go=go_read) for _ in range(children)]
    os.write(go_write, b"g" * children)  # One byte for each child.
    mine = queries()
    return {"parent": mine, "children": [child_report(*child) for child in forked], **parent.check()}


def fork_in_atomic(parent: Parent, fork: Fork = os.fork) -> Observations:
    """The parent forks inside transaction.atomic(); the child leaves the
    inherited block; the parent rolls back. Nothing of the parent's may be
    committed, and the parent's transaction must still be its own."""
    from django.db import transaction

    wrapper = connection(parent.alias)
    with transaction.atomic(using=parent.alias):
        with wrapper.cursor() as cursor:
            cursor.execute("INSERT INTO forksafe_probe VALUES (7)")
        read_end, write_end = os.pipe()
        parent.before_fork()
        pid = fork()
        if pid:
            os.close(write_end)
            child = child_report(pid, read_end)
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM forksafe_probe WHERE v = 7")
                parent_sees_own_row = cursor.fetchone()[0] == 1
            transaction.set_rollback(True, using=parent.alias)
    if pid == 0:  # The child, after the block.
        os.write(write_end, json.dumps({"child_touched_inherited": parent.child_touched_inherited()}).encode())
        os._exit(0)
    observations = {**child, **parent.check(), "parent_sees_own_row": parent_sees_own_row}
    if observations["parent_error"] is None:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM forksafe_probe WHERE v = 7")
            observations["parent_row_committed"] = cursor.fetchone()[0] > 0
    return observations


def other_thread(alias: str, on_server: Callable[[int], bool] | None = None, fork: Fork = os.fork) -> Observations:
    """Another thread holds a connection when the main thread forks. In the
    child, CPython destroys that thread's state and with it the thread-local
    wrapper; the child's garbage collection then frees the connection. The
    parent observed is that thread's; the child then uses the database."""
    opened, forked = threading.Event(), threading.Event()
    observations: Observations = {}

    def hold() -> None:
        try:
            parent = Parent(alias, on_server)
        except Exception as exc:
            observations["parent_error"] = f"{type(exc).__name__}: {exc}"
            opened.set()
            return
        opened.set()
        forked.wait()
        observations.update(parent.check())
        connection(alias).close()

    thread = threading.Thread(target=hold)
    thread.start()
    opened.wait()

    def work() -> Observations:
        gc.collect()  # Frees what CPython's fork left of the other thread.
        return own_session(alias)

    child = run_child(work, fork)
    forked.set()
    thread.join()
    return {**child, **observations}


def _watched(alias: str) -> Parent:
    return Parent(alias, server_lists(alias))


# For forksafe_check: each hazard on one alias, in a fresh process. A fork
# behind Python's back is uWSGI's (workers, mules, spooler) and a C
# extension's: no at-fork handler runs in the child.
HAZARDS: dict[str, Callable[[str], Observations]] = {
    "child closes": lambda alias: child_closes(_watched(alias)),
    "child exits": lambda alias: child_exits(_watched(alias)),
    "concurrent use": lambda alias: concurrent_use(_watched(alias)),
    "fork inside atomic": lambda alias: fork_in_atomic(_watched(alias)),
    "other thread's connection": lambda alias: other_thread(alias, server_lists(alias)),
    "child exits, libc fork": lambda alias: child_exits(_watched(alias), libc_fork),
    "fork inside atomic, libc fork": lambda alias: fork_in_atomic(_watched(alias), libc_fork),
}


def verdict(observations: Observations) -> dict[str, Any]:
    """Whether the hazard is closed, and why not, from its observations."""
    children = observations.get("children", [observations])
    for child in children:
        if child.get("child_touched_inherited"):
            return {"safe": False, "detail": "child used or closed the parent's SQLite handle"}
        if child.get("child_error"):
            return {"safe": False, "detail": f"child failed: {child['child_error']}".splitlines()[0]}
        if child.get("wrong_replies"):
            return {"safe": False, "detail": f"child got {child['wrong_replies']} wrong replies"}
    if observations.get("parent", {}).get("wrong_replies"):
        return {"safe": False, "detail": f"parent got {observations['parent']['wrong_replies']} wrong replies"}
    if observations.get("parent_error"):
        return {"safe": False, "detail": f"parent lost its session: {observations['parent_error']}".splitlines()[0]}
    if not (observations.get("parent_same_raw") and observations.get("parent_same_session")):
        return {"safe": False, "detail": "parent was reconnected to a new session"}
    if observations.get("parent_probe") != PROBE_VALUE:
        return {"safe": False, "detail": "parent lost its temporary table"}
    if observations.get("parent_session_on_server") is False:
        return {"safe": False, "detail": "the server no longer lists the parent's session"}
    for child in children:
        sessions = [*child.get("sessions", []), *([child["child_session"]] if "child_session" in child else [])]
        if observations["parent_session"] in sessions:
            return {"safe": False, "detail": "child ran on the parent's session"}
    if observations.get("parent_row_committed"):
        return {"safe": False, "detail": "child committed the parent's transaction"}
    return {"safe": True, "detail": "parent kept its session"}


# Caches ------------------------------------------------------------------------
# The same, for a memcached cache alias: the parent (which warmed the cache)
# and its children set and get, and every process must read its own values.

CACHE_ROUNDS = 300
CACHE_CHILDREN = 3


def _cache_rounds(alias: str, prefix: str, rounds: int) -> Observations:
    """`rounds` times set(key, key) then get(key), every reply checked."""
    from django.core.cache import caches

    wrong = errors = 0
    first_error = None
    for i in range(rounds):
        key = f"{prefix}:{os.getpid()}:{i}"
        try:
            caches[alias].set(key, key, 60)
            wrong += caches[alias].get(key) != key
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}".splitlines()[0]
    return {"wrong": wrong, "errors": errors, "first_error": first_error}


def _parent_kept_connection(alias: str, prefix: str) -> Observations:
    from django.core.cache import caches

    try:
        caches[alias].set(f"{prefix}:after", "after", 60)
        if caches[alias].get(f"{prefix}:after") != "after" or caches[alias].get(f"{prefix}:warm-up") != "warm":
            return {"parent_error": "the parent read a wrong value"}
    except Exception as exc:
        return {"parent_error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return {"parent_error": None}


def warm_up_cache(alias: str, prefix: str) -> None:
    from django.core.cache import caches

    caches[alias].set(f"{prefix}:warm-up", "warm", 60)
    if caches[alias].get(f"{prefix}:warm-up") != "warm":
        raise RuntimeError("the cache did not return the value just set")


def cache_concurrent_use(alias: str) -> Observations:
    """The parent (which warmed the cache) and its children set and get at once."""
    prefix = f"forksafe-check-{uuid.uuid4().hex}"
    warm_up_cache(alias, prefix)
    go_read, go_write = os.pipe()
    forked = [fork_child(lambda: _cache_rounds(alias, prefix, CACHE_ROUNDS), go=go_read) for _ in range(CACHE_CHILDREN)]
    os.write(go_write, b"g" * CACHE_CHILDREN)
    mine = _cache_rounds(alias, prefix, CACHE_ROUNDS)
    children = [child_report(*child) for child in forked]
    return {"parent": mine, "children": children, **_parent_kept_connection(alias, prefix)}


def cache_child_exits(alias: str) -> Observations:
    """A child uses the cache, then ends by interpreter finalisation."""
    prefix = f"forksafe-check-{uuid.uuid4().hex}"
    warm_up_cache(alias, prefix)
    pid = os.fork()
    if pid == 0:
        _cache_rounds(alias, prefix, 10)
        sys.exit(0)
    os.waitpid(pid, 0)
    return {"parent": {"wrong": 0, "errors": 0}, "children": [], **_parent_kept_connection(alias, prefix)}


CACHE_HAZARDS = {"concurrent use": cache_concurrent_use, "child exits": cache_child_exits}


def cache_verdict(observations: Observations) -> dict[str, Any]:
    for who, seen in [("parent", observations["parent"]), *(("child", c) for c in observations["children"])]:
        if seen.get("child_error"):
            return {"safe": False, "detail": f"child failed: {seen['child_error']}".splitlines()[0]}
        if seen["wrong"] or seen["errors"]:
            detail = f"{who}: {seen['wrong']} wrong values, {seen['errors']} errors"
            if seen.get("first_error"):
                detail += f" ({seen['first_error']})"
            return {"safe": False, "detail": detail}
    if observations["parent_error"]:
        return {"safe": False, "detail": f"parent lost its connection: {observations['parent_error']}"}
    return {"safe": True, "detail": "every value right, parent kept its connection"}
