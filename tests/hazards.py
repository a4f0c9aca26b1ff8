"""
Fork hazards, reproduced with real forks against real servers.

Run as ``python -m tests.hazards SCENARIO VENDOR ENGINE`` (ENGINE is
``forksafe`` or ``plain``): each scenario runs in a fresh process, forks, and
prints one JSON object of observations for tests/test_hazards.py to judge.
Session checks go through a separate monitor connection on the server side.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import django
from django.conf import settings

from django_forksafe.probe import SESSION_SQL
from tests import dbconfig

Result = dict[str, Any]


def libc_fork() -> int:
    """fork() as uWSGI calls it: Python's at-fork handlers do not run."""
    # PyDLL keeps the GIL across the call, so the child does not inherit a GIL
    # held by a thread that no longer exists.
    return ctypes.PyDLL(None).fork()  # type: ignore[no-any-return]


def in_child(
    work: Callable[[], Result],
    fork: Callable[[], int] = os.fork,
    go: int | None = None,
) -> int:
    """Fork; the child runs `work`, sends its result down a pipe and exits
    without interpreter finalization. Returns the pipe's read end."""
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:
        os.close(read_end)
        try:
            if go is not None:
                os.read(go, 1)
            result = work()
        except BaseException as exc:
            result = {"child_error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as pipe:
            json.dump(result, pipe)
        os._exit(0)
    os.close(write_end)
    _children[read_end] = pid
    return read_end


_children: dict[int, int] = {}


def child_result(read_end: int) -> Result:
    return child_result_from(_children.pop(read_end), read_end)


def child_result_from(pid: int, read_end: int, timeout: float = 60.0) -> Result:
    """The child's JSON report, or a report that it hung (then it is killed)."""
    ready, _, _ = select.select([read_end], [], [], timeout)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        return {"child_error": f"hung: no report within {timeout:g} s"}
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    result: Result = json.loads(data) if data else {"child_error": "no result"}
    result["child_exit_status"] = os.waitstatus_to_exitcode(status)
    return result


def run_child(work: Callable[[], Result], fork: Callable[[], int] = os.fork) -> Result:
    return child_result(in_child(work, fork))


class Monitor:
    """A raw driver connection, outside Django, that watches the server."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        config = dbconfig.server(vendor)
        if vendor == "mysql":
            import MySQLdb

            self.conn = MySQLdb.connect(
                host=config["HOST"],
                port=int(config["PORT"]),
                user=config["USER"],
                password=config["PASSWORD"],
                database=config["NAME"],
                autocommit=True,
                **dbconfig.options(vendor),
            )
        else:
            try:
                import psycopg as driver
            except ImportError:  # Django falls back to psycopg2 as well.
                import psycopg2 as driver  # type: ignore[no-redef]

            self.conn = driver.connect(
                host=config["HOST"],
                port=config["PORT"],
                user=config["USER"],
                password=config["PASSWORD"] or None,
                dbname=config["NAME"],
                **dbconfig.options(vendor),
            )
            self.conn.autocommit = True

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def alive(self, session_id: int) -> bool:
        if self.vendor == "mysql":
            sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s"
        else:
            sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = %s"
        return bool(self.query(sql, (session_id,))[0][0])

    def sessions(self) -> set[int]:
        """Sessions on our test database, this monitor's own included."""
        if self.vendor == "mysql":
            sql = "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s"
        else:
            sql = "SELECT pid FROM pg_stat_activity WHERE datname = %s"
        return {int(row[0]) for row in self.query(sql, (dbconfig.server(self.vendor)["NAME"],))}

    def new_sessions(self, before: set[int], seconds: float = 20.0) -> set[int]:
        """Sessions opened since `before` that are still there. Sessions end
        asynchronously after a client exits: poll, bounded, until they go."""
        import time

        deadline = time.monotonic() + seconds
        while (new := self.sessions() - before) and time.monotonic() < deadline:
            time.sleep(0.05)
        return new


def session_id(alias: str = "default") -> int:
    from django.db import connections

    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(SESSION_SQL[connection.vendor])
        return int(cursor.fetchone()[0])


class Parent:
    """The parent's session, as it was before the fork: id, raw connection and
    a temporary table only that session can see."""

    def __init__(self, alias: str = "default", monitor: Monitor | None = None) -> None:
        from django.db import connections

        self.alias = alias
        self.connection: Any = connections[alias]
        self.monitor = monitor
        self.session_id = session_id(alias)
        self.raw = self.connection.connection
        with self.connection.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE forksafe_probe (v INTEGER)")
            cursor.execute("INSERT INTO forksafe_probe VALUES (42)")

    def check(self) -> Result:
        """Whether the parent still has its own session, seen both ways."""
        result: Result = {"parent_error": None}
        try:
            result["parent_same_session"] = session_id(self.alias) == self.session_id
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT v FROM forksafe_probe")
                result["parent_probe"] = cursor.fetchone()[0]
        except Exception as exc:
            result["parent_error"] = f"{type(exc).__name__}: {exc}"
        result["parent_same_raw"] = self.connection.connection is self.raw
        if self.monitor is not None:
            result["parent_session_on_server"] = self.monitor.alive(self.session_id)
        return result


def setup(vendor: str, engine: str, **options: Any) -> Monitor | None:
    databases = options.pop("DATABASES", None) or {
        "default": dbconfig.database(
            vendor,
            engine,
            **({"NAME": os.path.join(tempfile.mkdtemp(), "db.sqlite3")} if vendor == "sqlite3" else {}),
        )
    }
    settings.configure(DATABASES=databases, USE_TZ=True, **options)
    django.setup()
    return Monitor(vendor) if vendor in dbconfig.SERVER_VENDORS else None


def child_session(first: Callable[[], object] = lambda: None) -> Result:
    """The child's own use of the database, after `first`."""
    from django.db.backends.signals import connection_created

    created: list[int] = []
    connection_created.connect(lambda **kwargs: created.append(os.getpid()), weak=False)
    first()
    return {"child_session": session_id(), "connection_created_in_child": created == [os.getpid()]}


# Scenarios: each takes (vendor, engine) and returns observations.


def child_closes(vendor: str, engine: str) -> Result:
    """The child's habitual clean-up: connection.close()."""
    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)

    def work() -> Result:
        from django.db import connection

        connection.close()
        return {}

    return {**run_child(work), **parent.check()}


def child_closes_all(vendor: str, engine: str) -> Result:
    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)

    def work() -> Result:
        from django.db import connections

        connections.close_all()
        return {}

    return {**run_child(work), **parent.check()}


def child_closes_old_connections(vendor: str, engine: str) -> Result:
    """close_old_connections(), as a Celery task or a request does. With the
    default CONN_MAX_AGE=0 the connection is obsolete, so Django closes it."""
    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)

    def work() -> Result:
        from django.db import close_old_connections

        close_old_connections()
        return {}

    return {**run_child(work), **parent.check()}


def child_queries(vendor: str, engine: str) -> Result:
    """The child uses the database: it must get a session of its own."""
    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)
    result = run_child(child_session)
    return {**result, **parent.check(), "parent_session": parent.session_id}


def child_drops_connection(vendor: str, engine: str) -> Result:
    """The child lets the connection be garbage-collected: mysqlclient's
    deallocator sends COM_QUIT, psycopg's does not."""
    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)

    def work() -> Result:
        from django.db import connections

        del connections["default"]
        parent.connection = parent.raw = None
        gc.collect()
        return {}

    return {**run_child(work), **parent.check()}


def child_exits(vendor: str, engine: str, fork: Callable[[], int] = os.fork) -> Result:
    """The child ends through sys.exit(): interpreter finalization frees the
    inherited connection. No try/finally on this path: the child unwinds it.
    Through libc, nothing told the child that it is one before it exits."""
    monitor = setup(vendor, engine)
    parent = Parent()
    if monitor is not None:
        # The monitor is a plain driver connection: finalization in the child
        # would end its session too. Reopen it once the child is gone.
        monitor.conn.close()
    pid = fork()
    if pid == 0:
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    parent.monitor = Monitor(vendor) if monitor is not None else None
    return {"child_exit_status": os.waitstatus_to_exitcode(status), **parent.check()}


def other_thread(vendor: str, engine: str) -> Result:
    """Another thread of the parent holds a connection at fork time. In the
    child CPython destroys that thread's state, and with it the thread-local
    wrapper; the child's garbage collection then frees the connection."""
    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)
    opened, fork_done = threading.Event(), threading.Event()
    thread_result: Result = {}

    def hold_connection() -> None:
        from django.db import connection

        before = session_id()
        opened.set()
        fork_done.wait()
        try:
            thread_result["thread_same_session"] = session_id() == before
        except Exception as exc:
            thread_result["thread_error"] = f"{type(exc).__name__}: {exc}"
        thread_result["thread_session_on_server"] = monitor is not None and monitor.alive(before)
        connection.close()

    thread = threading.Thread(target=hold_connection)
    thread.start()
    opened.wait()

    def work() -> Result:
        gc.collect()
        return child_session()

    result = run_child(work)
    fork_done.set()
    thread.join()
    return {**result, **thread_result, **parent.check()}


def fork_in_atomic(
    vendor: str,
    engine: str,
    fork: Callable[[], int] = os.fork,
    child_writes_in_block: bool = True,
    nested: bool = False,
) -> Result:
    """The parent forks inside transaction.atomic() (with `nested`, inside a
    savepoint too), with an on_commit callback registered, and rolls back
    once the child is done. The child writes 2 inside the inherited blocks
    (unless not `child_writes_in_block`), leaves them, then writes 3."""
    monitor = setup(vendor, engine)
    assert monitor is not None
    from django.db import connection, transaction

    table = f"forksafe_atomic_{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (v INTEGER)")

    def insert(value: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES ({value})")

    def committed() -> list[int]:
        return sorted(row[0] for row in monitor.query(f"SELECT v FROM {table}"))

    parent_session = session_id()
    on_commit_ran: list[int] = []
    result: Result = {}
    child: Result = {}
    pid = -1
    try:
        with transaction.atomic():
            insert(1)
            transaction.on_commit(lambda: on_commit_ran.append(os.getpid()))
            with transaction.atomic() if nested else contextlib.nullcontext():
                read_end, write_end = os.pipe()
                pid = fork()
                if pid == 0:  # The child, inside the inherited blocks.
                    os.close(read_end)
                    if child_writes_in_block:
                        try:
                            insert(2)
                            child["session_in_block"] = session_id()
                        except Exception as exc:
                            child["error_in_block"] = f"{type(exc).__name__}: {exc}"
                else:
                    os.close(write_end)
                    result.update(child_result_from(pid, read_end))
                    # Still inside the parent's transaction: is it intact?
                    with connection.cursor() as cursor:
                        cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE v = 1")
                        result["parent_sees_own_row"] = cursor.fetchone()[0] == 1
                    result["committed_before_rollback"] = committed()
            if pid:
                transaction.set_rollback(True)
    except Exception as exc:
        (child if pid == 0 else result)["error_leaving_block"] = f"{type(exc).__name__}: {exc}"
    try:
        if pid == 0:  # The child has left every inherited block.
            try:
                child["connected_after_leaving"] = connection.connection is not None
                insert(3)
                child["session_after_block"] = session_id()
            except Exception as exc:
                child["error_after_block"] = f"{type(exc).__name__}: {exc}"
            child["on_commit_ran_in_child"] = os.getpid() in on_commit_ran
            with os.fdopen(write_end, "w") as pipe:
                json.dump(child, pipe)
            os._exit(0)
        result["committed_after_rollback"] = committed()
        result["parent_on_commit_ran"] = on_commit_ran
        result["parent_same_session"] = session_id() == parent_session
        result["parent_session"] = parent_session
    finally:
        if os.getpid() == _scenario_pid:
            monitor.query(f"DROP TABLE {table}")
    return result


def child_killed_in_atomic(vendor: str, engine: str) -> Result:
    """A child dies by SIGKILL inside its own atomic block (a job timeout, the
    OOM killer); the parent's next autocommit write must be committed."""
    monitor = setup(vendor, engine)
    assert monitor is not None
    from django.db import connection, transaction

    table = f"forksafe_killed_{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (v INTEGER)")
    parent_session = session_id()
    try:
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute(f"INSERT INTO {table} VALUES (1)")
                    os.write(ready_write, b"1")
                    while True:
                        signal.pause()  # Until the parent kills it.
            finally:
                os._exit(1)
        os.read(ready_read, 1)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES (2)")
        return {
            "child_killed": os.WIFSIGNALED(status),
            "visible_to_others": sorted(row[0] for row in monitor.query(f"SELECT v FROM {table}")),
            "parent_same_session": session_id() == parent_session,
        }
    finally:
        if os.getpid() == _scenario_pid:
            connection.close()
            monitor.query(f"DROP TABLE {table}")


def write_row(table: str, value: int) -> Result:
    """A process pool task: one autocommit write through the ORM's connection."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES ({value})")
        return {"pid": os.getpid(), "session": session_id()}
    except Exception as exc:
        return {"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"}


def pool_started_in_atomic(kind: str) -> Callable[[str, str], Result]:
    """A process pool (fork start method) started on first use inside
    atomic(), as under ATOMIC_REQUESTS: 4 writes during the block, 4 after
    it; the parent rolls its own row back. The plain ENGINE's control runs
    one worker, so that the shared session is used in turn, not at once."""

    def scenario(vendor: str, engine: str) -> Result:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        monitor = setup(vendor, engine)
        assert monitor is not None
        from django.db import connection, transaction

        table = f"forksafe_pool_{os.getpid()}"
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {table} (v INTEGER)")
        parent_session = session_id()
        context = multiprocessing.get_context("fork")
        workers = 2 if engine == "forksafe" else 1
        pool: Any = (
            context.Pool(workers) if kind == "multiprocessing" else ProcessPoolExecutor(workers, mp_context=context)
        )

        def run_task(value: int) -> Result:
            if kind == "multiprocessing":
                return pool.apply_async(write_row, (table, value)).get(60)  # type: ignore[no-any-return]
            return pool.submit(write_row, table, value).result(60)  # type: ignore[no-any-return]

        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute(f"INSERT INTO {table} VALUES (0)")
                during = [run_task(value) for value in range(1, 5)]
                transaction.set_rollback(True)
            after = [run_task(value) for value in range(5, 9)]
            return {
                "tasks": during + after,
                "committed": sorted(row[0] for row in monitor.query(f"SELECT v FROM {table}")),
                "parent_session": parent_session,
                "parent_same_session": session_id() == parent_session,
            }
        finally:
            if kind == "multiprocessing":
                pool.terminate()
                pool.join()
            else:
                pool.shutdown(cancel_futures=True)
            connection.close()
            monitor.query(f"DROP TABLE {table}")

    return scenario


def concurrent(vendor: str, engine: str, fork: Callable[[], int] = os.fork) -> Result:
    """The parent and several children query at the same time; every reply
    must be the one asked for, from the process's own session. Through libc,
    the children's first query is their first use of anything."""
    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)
    children, rounds = 4, 300
    go_read, go_write = os.pipe()

    def hammer() -> Result:
        from django.db import connection

        sessions, wrong = set(), 0
        for i in range(rounds):
            token = f"{os.getpid()}-{i}"
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT %s, ({SESSION_SQL[vendor]})", [token])
                reply, session = cursor.fetchone()
            wrong += reply != token
            sessions.add(int(session))
        return {"wrong_replies": wrong, "sessions": sorted(sessions)}

    pipes = [in_child(hammer, fork, go=go_read) for _ in range(children)]
    os.write(go_write, b"x" * children)
    mine = hammer()
    results = [child_result(pipe) for pipe in pipes]
    return {
        "parent": mine,
        "children": results,
        "parent_session": parent.session_id,
        **parent.check(),
    }


def leak_cycles(vendor: str, engine: str) -> Result:
    """50 fork/use/exit cycles; then the server's session count must be back to
    where it started plus the parent's own."""
    monitor = setup(vendor, engine)
    assert monitor is not None
    before = monitor.sessions()
    parent = Parent(monitor=monitor)

    def work() -> Result:
        from django.db import connection

        session = session_id()
        connection.close()
        return {"child_session": session}

    sessions = {run_child(work).get("child_session") for _ in range(50)}
    return {
        "new_sessions": sorted(monitor.new_sessions(before | {parent.session_id})),
        "parent_session": parent.session_id,
        "distinct_child_sessions": len(sessions - {None}),
        **parent.check(),
    }


def thread_dies_unclosed(vendor: str, engine: str) -> Result:
    """No leak in the parent: a thread that opened a connection and ended
    without closing it leaves nothing behind once its wrapper is collected."""
    monitor = setup(vendor, engine)
    assert monitor is not None
    from django_forksafe import registry

    before = monitor.sessions()
    thread_session: list[int] = []
    thread = threading.Thread(target=lambda: thread_session.append(session_id()))
    thread.start()
    thread.join()
    opened = monitor.alive(thread_session[0])
    del thread
    gc.collect()
    return {
        "thread_session_opened": opened,
        "registry_after": len(registry._open_connections),
        "new_sessions": sorted(monitor.new_sessions(before)),
    }


def _drop_then_request(parent: Parent) -> None:
    # Garbage before detection: the registry keeps the raw connection
    # alive, so mysqlclient's deallocator cannot run.
    from django.core.signals import request_started
    from django.db import connections

    del connections["default"]
    parent.connection = parent.raw = None
    gc.collect()
    request_started.send(sender=None)


def _health_check(parent: Parent) -> None:
    # The CONN_HEALTH_CHECKS ping, as at the start of a request.
    from django.db import connection

    connection.health_check_enabled = True  # type: ignore[attr-defined]
    connection.health_check_done = False  # type: ignore[attr-defined]
    connection.close_if_health_check_failed()


def _savepoint(parent: Parent) -> None:
    from django.db import transaction

    with transaction.atomic():
        with transaction.atomic():
            pass


def _set_autocommit(parent: Parent) -> None:
    from django.db import connection

    connection.set_autocommit(False)
    connection.set_autocommit(True)


def _commit(parent: Parent) -> None:
    from django.db import connection

    connection.commit()


def _rollback(parent: Parent) -> None:
    from django.db import connection

    connection.rollback()


def _query(parent: Parent) -> None:
    session_id()


def _close(parent: Parent) -> None:
    from django.db import connection

    connection.close()


def _close_all(parent: Parent) -> None:
    from django.db import connections

    connections.close_all()


def _close_old_connections(parent: Parent) -> None:
    from django.db import close_old_connections

    close_old_connections()


def _request_started(parent: Parent) -> None:
    from django.core.signals import request_started

    request_started.send(sender=None)


# What a child forked behind Python's back does first.
LIBC_FORK_TRIGGERS: dict[str, Callable[[Parent], None]] = {
    "query": _query,
    "close": _close,
    "close_all": _close_all,
    "close_old_connections": _close_old_connections,
    "request_started": _request_started,
    "middleware": lambda parent: through_middleware(asynchronous=False),
    "async_middleware": lambda parent: through_middleware(asynchronous=True),
    "drop_then_request": _drop_then_request,
    "health_check": _health_check,
    "savepoint": _savepoint,
    "set_autocommit": _set_autocommit,
    "commit": _commit,
    "rollback": _rollback,
}


def libc_fork_then(trigger: str) -> Callable[[str, str], Result]:
    """A fork that skips Python's at-fork handlers, then `trigger` in the
    child: the first thing it does. Then the child queries on its own."""

    def scenario(vendor: str, engine: str) -> Result:
        monitor = setup(vendor, engine)
        parent = Parent(monitor=monitor)

        def work() -> Result:
            return child_session(first=lambda: LIBC_FORK_TRIGGERS[trigger](parent))

        result = run_child(work, fork=libc_fork)
        return {**result, **parent.check(), "parent_session": parent.session_id}

    return scenario


def through_middleware(asynchronous: bool) -> None:
    """One request through ForkSafeMiddleware, sync or async, without the
    request_started signal (so that only the middleware can notice)."""
    import asyncio

    from django.http import HttpRequest, HttpResponse

    from django_forksafe.middleware import ForkSafeMiddleware

    if asynchronous:

        async def get_response(request: HttpRequest) -> HttpResponse:
            return HttpResponse()

        asyncio.run(ForkSafeMiddleware(get_response)(HttpRequest()))  # type: ignore[arg-type]
    else:
        ForkSafeMiddleware(lambda request: HttpResponse())(HttpRequest())


def post_fork_signal(fork: Callable[[], int]) -> Callable[[str, str], Result]:
    """post_fork: once per child, after invalidation, before reconnecting."""

    def scenario(vendor: str, engine: str) -> Result:
        monitor = setup(vendor, engine)
        parent = Parent(monitor=monitor)
        from django.db import connection

        from django_forksafe.signals import post_fork

        calls: list[Result] = []

        def receiver(sender: object, parent_pid: int, aliases: list[str], **kwargs: Any) -> None:
            calls.append(
                {"parent_pid": parent_pid, "aliases": aliases, "connection": connection.connection is None}
            )

        post_fork.connect(receiver)

        def work() -> Result:
            from django.db import connections

            signalled_at_start = len(calls)  # Before the child does anything.
            connections.close_all()  # Detection point for a fork without handlers.
            own = session_id()
            connections.close_all()
            session_id()
            return {"signals": calls, "child_session": own, "signalled_at_start": signalled_at_start}

        result = run_child(work, fork=fork)
        return {**result, **parent.check(), "parent_pid": os.getpid(), "parent_signals": calls}

    return scenario


def pool(vendor: str, engine: str, warm_up_only: bool = False) -> Result:
    """Django's PostgreSQL connection pool (OPTIONS["pool"]): the parent holds
    a live pool; children use and close connections, repeatedly. With
    `warm_up_only`, the parent only opened the pool (as a master warming up
    would) and never took a connection from it through Django."""
    pool_options = {"min_size": 3, "max_size": 4, "timeout": 5}
    databases = {"default": dbconfig.database("postgresql", engine, OPTIONS={"pool": pool_options})}
    monitor = setup("postgresql", engine, DATABASES=databases)
    assert monitor is not None
    from django.db import connections

    connection: Any = connections["default"]  # With a pool: Django's PostgreSQL wrapper.
    before = monitor.sessions()
    if warm_up_only:
        connection.pool.open(wait=True, timeout=10)
        parent_pool_sessions = monitor.sessions() - before
        children = [run_child(lambda: {"sessions": [session_id(), session_id()]}) for _ in range(3)]
        alive = parent_pool_sessions <= monitor.sessions()
        connection.close_pool()
        return {"children": children, "parent_pool_sessions": sorted(parent_pool_sessions), "parent_pool_alive": alive}
    parent = Parent(monitor=monitor)
    connection.pool.wait(timeout=10)
    parent_pool_sessions = monitor.sessions() - before

    def work() -> Result:
        sessions = []
        for _ in range(3):
            sessions.append(session_id())
            connection.close()  # Back to the child's own pool.
        connections.close_all()
        sessions.append(session_id())
        return {"sessions": sessions}

    children = [run_child(work) for _ in range(5)]
    result = {**parent.check(), "children": children}
    result["parent_pool_alive"] = parent_pool_sessions <= monitor.sessions()
    parent_sessions, errors = set(), []
    for _ in range(8):  # Cycle through the parent's pooled connections.
        connection.close()
        try:
            parent_sessions.add(session_id())
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    result["parent_errors"] = errors
    result["parent_reused_pool"] = parent_sessions <= parent_pool_sessions
    result["parent_pool_sessions"] = sorted(parent_pool_sessions)
    connection.close_pool()
    return result


def several_aliases(vendor: str, engine: str) -> Result:
    """MySQL, PostgreSQL and SQLite at once; the child closes them all and
    then uses each with sessions of its own."""
    databases = {
        "default": dbconfig.database("sqlite3", engine, NAME=os.path.join(tempfile.mkdtemp(), "db")),
        "mysql": dbconfig.database("mysql", engine),
        "postgresql": dbconfig.database("postgresql", engine),
        "replica": dbconfig.database("postgresql", engine),
    }
    setup(vendor, engine, DATABASES=databases)
    monitors = {"mysql": Monitor("mysql"), "postgresql": Monitor("postgresql")}
    monitors["replica"] = monitors["postgresql"]
    from django.db import connections

    parents = {alias: Parent(alias, monitors[alias]) for alias in ("mysql", "postgresql", "replica")}
    sqlite_raw = connections["default"].connection if connections["default"].cursor() else None

    def work() -> Result:
        connections.close_all()
        return {
            "child_sessions": {alias: session_id(alias) for alias in parents},
            "child_sqlite_reopened": connections["default"].cursor() is not None
            and connections["default"].connection is not sqlite_raw,
        }

    result = run_child(work)
    result["parents"] = {alias: parent.check() for alias, parent in parents.items()}
    result["parent_sessions"] = {alias: parent.session_id for alias, parent in parents.items()}
    return result


def sqlite_file(vendor: str, engine: str) -> Result:
    """SQLite's own rule: a handle opened before fork() is never used or
    closed in the child. A trace callback on the parent's handle sees use."""
    setup("sqlite3", engine)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE t (v INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1)")
    raw = connection.connection
    statements: list[str] = []
    raw.set_trace_callback(statements.append)

    def work() -> Result:
        import sqlite3

        seen_before = len(statements)
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO t VALUES (2)")
        connection.close()
        try:
            raw.total_changes  # noqa: B018 - raises if the handle was closed
            inherited_open = True
        except sqlite3.ProgrammingError:
            inherited_open = False
        spatial = spatial_query() if engine.startswith("gis") else None
        return {
            "inherited_handle_used": len(statements) > seen_before,
            "inherited_handle_open": inherited_open,
            "child_spatial": spatial,
        }

    result = run_child(work)
    with connection.cursor() as cursor:
        cursor.execute("SELECT v FROM t ORDER BY v")
        result["parent_rows"] = [row[0] for row in cursor.fetchall()]
    result["parent_same_raw"] = connection.connection is raw
    return result


def sqlite_memory(vendor: str, engine: str) -> Result:
    """An in-memory database: the child keeps a private copy of it."""
    settings.configure(
        DATABASES={"default": dbconfig.database("sqlite3", engine, NAME=":memory:")}, USE_TZ=True
    )
    django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE t (v INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1)")
    raw = connection.connection

    def work() -> Result:
        with connection.cursor() as cursor:
            cursor.execute("SELECT v FROM t")
            seen = [row[0] for row in cursor.fetchall()]
            cursor.execute("INSERT INTO t VALUES (2)")
        connection.close()  # Django keeps in-memory databases open.
        with connection.cursor() as cursor:
            cursor.execute("SELECT v FROM t ORDER BY v")
            after_close = [row[0] for row in cursor.fetchall()]
        return {"child_sees": seen, "child_after_close": after_close}

    result = run_child(work)
    with connection.cursor() as cursor:
        cursor.execute("SELECT v FROM t ORDER BY v")
        result["parent_rows"] = [row[0] for row in cursor.fetchall()]
    result["parent_same_raw"] = connection.connection is raw
    return result


SPATIAL_SQL = {
    "mysql": "SELECT ST_AsText(ST_Buffer(ST_GeomFromText('POINT(1 2)'), 0))",
    "postgresql": "SELECT ST_AsText(ST_SetSRID(ST_MakePoint(1, 2), 4326))",
    "sqlite": "SELECT AsText(MakePoint(1, 2))",
}


def spatial_query() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(SPATIAL_SQL[connection.vendor])
        return str(cursor.fetchone()[0])


def gis(vendor: str, engine: str) -> Result:
    """A GIS ENGINE: the child closes, then runs spatial SQL on a session of
    its own; the parent keeps its session, spatial functions and all."""
    monitor = setup(vendor, engine)
    from django.db import connection

    if vendor == "postgresql":
        connection.prepare_database()  # CREATE EXTENSION IF NOT EXISTS postgis
    parent = Parent(monitor=monitor)

    def work() -> Result:
        connection.close()
        session = child_session()
        return {"child_spatial": spatial_query(), **session}

    result = {**run_child(work), **parent.check(), "parent_session": parent.session_id}
    if result["parent_error"] is None:
        result["parent_spatial"] = spatial_query()
    return result


def through_pgbouncer(vendor: str, engine: str) -> Result:
    """Through PgBouncer (transaction pooling), what the parent must keep is
    its client connection to PgBouncer, as PgBouncer's admin console lists it."""
    import socket

    from tests.pgbouncer import client_ports

    setup("postgresql", engine)
    from django.db import connection

    bouncer = int(os.environ["FORKSAFE_PGBOUNCER_PORT"])

    def local_port() -> int:
        with socket.socket(fileno=os.dup(connection.connection.fileno())) as sock:
            return int(sock.getsockname()[1])

    connection.ensure_connection()
    raw, parent_port = connection.connection, local_port()

    def work() -> Result:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"child_port": local_port()}

    result = run_child(work)
    result["parent_port_listed"] = parent_port in client_ports(bouncer)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 42")
            result["parent_answer"] = cursor.fetchone()[0]
        result["parent_error"] = None
    except Exception as exc:
        result["parent_error"] = f"{type(exc).__name__}: {exc}"
    result["parent_same_raw"] = connection.connection is raw
    result["parent_port"] = parent_port
    return result


def tls_in_use(vendor: str, engine: str) -> Result:
    setup(vendor, engine)
    from django.db import connection

    with connection.cursor() as cursor:
        if vendor == "mysql":
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            cipher = cursor.fetchone()[1]
        else:
            cursor.execute("SELECT cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            cipher = cursor.fetchone()[0]
    return {"cipher": cipher}


def child_closes_raw_connection(vendor: str, engine: str) -> Result:
    """The child closes the driver's connection itself, not through Django,
    before anything else: only the at-fork handler can have silenced it."""
    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)
    raw = parent.raw

    def work() -> Result:
        try:
            raw.close()
        except Exception as exc:  # Already closed by the at-fork handler (mysqlclient).
            return {"raw_close_error": f"{type(exc).__name__}: {exc}"}
        return {}

    return {**run_child(work), **parent.check()}


def registry_lock_held_at_fork(vendor: str, engine: str) -> Result:
    """A process forked behind Python's back (P) notices it in one thread,
    which is still inside the invalidation (held in a post_fork receiver)
    when P's main thread forks again: the grandchild's first query must not
    wait for a thread that does not exist in it."""
    from django_forksafe import registry
    from django_forksafe.signals import post_fork

    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)

    def middle() -> Result:
        middle_pid = os.getpid()
        inside, release = threading.Event(), threading.Event()

        def hold(**kwargs: Any) -> None:
            if os.getpid() == middle_pid:
                inside.set()
                release.wait()

        post_fork.connect(hold, weak=False)
        thread = threading.Thread(target=registry.invalidate_if_forked)
        thread.start()
        inside.wait()
        try:
            read_end, write_end = os.pipe()
            pid = libc_fork()
            if pid == 0:
                os.write(write_end, json.dumps(child_session()).encode())
                os._exit(0)
            os.close(write_end)
            return child_result_from(pid, read_end, timeout=30)
        finally:
            release.set()
            thread.join()

    return {**run_child(middle, fork=libc_fork), **parent.check(), "parent_session": parent.session_id}


def signal_lock_held_at_fork(vendor: str, engine: str) -> Result:
    """Another thread holds post_fork's lock (connecting a receiver) when the
    main thread forks: the at-fork handler sends post_fork in the child."""
    from django_forksafe.signals import post_fork

    monitor = setup(vendor, engine)
    parent = Parent(monitor=monitor)
    post_fork.connect(lambda **kwargs: None, weak=False)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with post_fork.lock:
            held.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write_end, json.dumps(child_session()).encode())
            os._exit(0)
        os.close(write_end)
        result = child_result_from(pid, read_end, timeout=30)
    finally:
        release.set()
        thread.join()
    return {**result, **parent.check(), "parent_session": parent.session_id}


SCENARIOS: dict[str, Callable[[str, str], Result]] = {
    "through_pgbouncer": through_pgbouncer,
    "gis": gis,
    "tls_in_use": tls_in_use,
    "child_closes": child_closes,
    "child_closes_all": child_closes_all,
    "child_closes_old_connections": child_closes_old_connections,
    "child_queries": child_queries,
    "child_drops_connection": child_drops_connection,
    "child_exits": child_exits,
    "other_thread": other_thread,
    "fork_in_atomic": fork_in_atomic,
    "fork_in_nested_atomic": lambda vendor, engine: fork_in_atomic(vendor, engine, nested=True),
    "fork_in_atomic_child_only_leaves": lambda vendor, engine: fork_in_atomic(
        vendor, engine, child_writes_in_block=False, nested=True
    ),
    "libc_fork_in_atomic": lambda vendor, engine: fork_in_atomic(vendor, engine, libc_fork),
    "libc_fork_in_atomic_child_only_leaves": lambda vendor, engine: fork_in_atomic(
        vendor, engine, libc_fork, child_writes_in_block=False, nested=True
    ),
    "child_killed_in_atomic": child_killed_in_atomic,
    "multiprocessing_pool_started_in_atomic": pool_started_in_atomic("multiprocessing"),
    "process_pool_executor_started_in_atomic": pool_started_in_atomic("executor"),
    "libc_fork_child_exits": lambda vendor, engine: child_exits(vendor, engine, libc_fork),
    "libc_fork_concurrent": lambda vendor, engine: concurrent(vendor, engine, libc_fork),
    "child_closes_raw_connection": child_closes_raw_connection,
    "registry_lock_held_at_fork": registry_lock_held_at_fork,
    "signal_lock_held_at_fork": signal_lock_held_at_fork,
    "concurrent": concurrent,
    "leak_cycles": leak_cycles,
    "thread_dies_unclosed": thread_dies_unclosed,
    "several_aliases": several_aliases,
    "sqlite_file": sqlite_file,
    "sqlite_memory": sqlite_memory,
    "pool": pool,
    "pool_warmed_up": lambda vendor, engine: pool(vendor, engine, warm_up_only=True),
    "post_fork_signal": post_fork_signal(os.fork),
    "libc_fork_post_fork_signal": post_fork_signal(libc_fork),
    **{
        f"libc_fork_{trigger}": libc_fork_then(trigger)
        for trigger in LIBC_FORK_TRIGGERS
    },
}

_scenario_pid = os.getpid()

if __name__ == "__main__":
    name, vendor, engine = sys.argv[1:4]
    observations = SCENARIOS[name](vendor, engine)
    from django_forksafe import detection

    print(json.dumps({**observations, "detection": detection.METHOD}))
