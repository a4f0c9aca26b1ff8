"""
What a review found around the at-fork moment: hooks that run before ours,
a signal handler in the middle of invalidation, psycopg_pool's
close_returns, and database endpoints written every way Django accepts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from django_forksafe.hazards import (
    SESSION_SQL,
    Fork,
    child_report,
    connection,
    fork_child,
    libc_fork,
    own_session,
    run_child,
    session_id,
)
from tests import dbconfig
from tests.backends import backend_of
from tests.hazards import early
from tests.hazards.common import Monitor, Result, parent_of, setup


def hook_before_ours(vendor: str, engine: str) -> Result:
    """An at-fork hook registered before django-forksafe (a settings module,
    a monitoring library) queries in the child: the session it opens is the
    child's own, and stays usable after our handler has run."""
    monitor = setup(vendor, engine)  # The hook: tests.hazards.early.
    parent = parent_of(monitor)

    def work() -> Result:
        observations: Result = {**early.HOOK, "later_error": None}
        try:
            observations["later_session"] = session_id()
        except Exception as exc:
            observations["later_error"] = f"{type(exc).__name__}: {exc}"
        return observations

    return {**run_child(work), **parent.check()}


def libc_fork_own_raw_connection_first(vendor: str, engine: str) -> Result:
    """A child forked behind Python's back opens a driver connection of its
    own outside Django (a uWSGI @postfork LISTEN connection), then uses
    Django: its own connection must survive that first checkout."""
    monitor = setup(vendor, engine)
    parent = parent_of(monitor)

    def work() -> Result:
        with Monitor(vendor) as own:
            before = own.query(SESSION_SQL[vendor])[0][0]
            django_session = session_id()
            observations: Result = {"django_session": django_session, "own_error": None}
            try:
                observations["own_same_session"] = own.query(SESSION_SQL[vendor])[0][0] == before
            except Exception as exc:
                observations["own_error"] = f"{type(exc).__name__}: {exc}"
            return observations

    return {**run_child(work, libc_fork), **parent.check()}


def connection_above_lowered_limit(fork: Fork, closed_first: bool = False) -> Callable[[str, str], Result]:
    """The parent's connection has a descriptor number at or above
    RLIMIT_NOFILE, lowered after it was opened (a supervisor's ulimit, a
    library's setrlimit()): nothing can be put over that number in the child.
    The child must let it go all the same, without a word to the server nor
    an error in the log, and connect anew below the limit. With
    `closed_first`, the child has closed that descriptor itself before its
    first query (as Celery's workers close what they inherited)."""

    def scenario(vendor: str, engine: str) -> Result:
        import logging
        import resource

        limit = 100
        monitor = setup(vendor, engine)
        filler = [os.open(os.devnull, os.O_RDONLY)]
        while filler[-1] < limit + 10:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        parent = parent_of(monitor)  # Its socket lands above the filler.
        for fd in filler:
            os.close(fd)
        logged: list[str] = []

        class Recorder(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                logged.append(record.getMessage())

        logging.getLogger("django_forksafe").addHandler(Recorder(logging.WARNING))
        raw = connection("default").connection
        fileno = getattr(raw, "fileno", None)
        above: Result = {"descriptor_above_limit": fileno() >= limit if callable(fileno) else None}

        def work() -> Result:
            if closed_first and callable(fileno):
                with contextlib.suppress(OSError):  # The C extension closed it already.
                    os.close(fileno())
            return {**own_session(), "logged": logged}

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            pid, read_end = fork_child(work, fork)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return {**above, **child_report(pid, read_end), **parent.check()}

    return scenario


def forked_out_of_descriptors(fork: Fork) -> Callable[[str, str], Result]:
    """The parent forks with no descriptor left below RLIMIT_NOFILE, holding
    Django's connection and a driver connection it opened outside Django.
    The child queries (it cannot connect: no descriptor), then ends as an
    interpreter does, freeing what it inherited: neither of the parent's
    sessions may hear of it. With Django's ENGINE, mysqlclient's deallocator
    says goodbye on both."""

    def scenario(vendor: str, engine: str) -> Result:
        import gc
        import resource

        monitor = setup(vendor, engine)
        parent = parent_of(monitor)
        outside = [Monitor(vendor)]  # Freed in the child as it ends.
        outside_session = outside[0].query(SESSION_SQL[vendor])[0][0]

        def work() -> Result:
            from django.db import connections

            observations: Result = {"query_error": None}
            try:
                observations.update(own_session())
            except Exception as exc:
                observations["query_error"] = f"{type(exc).__name__}: {exc}"
            for wrapper in connections.all(initialized_only=True):
                wrapper.connection = None
            outside.clear()
            gc.collect()
            return observations

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        filler: list[int] = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        try:
            # The child reports through a pipe: its two ends, then nothing left.
            reserved = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]
            with contextlib.suppress(OSError):
                while True:
                    filler.append(os.open(os.devnull, os.O_RDONLY))
            for fd in reserved:
                os.close(fd)
            pid, read_end = fork_child(work, fork)
        finally:
            for fd in filler:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        result = child_report(pid, read_end)
        try:
            result["outside_same_session"] = outside[0].query(SESSION_SQL[vendor])[0][0] == outside_session
        except Exception as exc:
            result["outside_same_session"] = f"{type(exc).__name__}: {exc}"
        return {**result, **parent.check()}

    return scenario


def descriptor_reused_by_child(vendor: str, engine: str) -> Result:
    """A child forked behind Python's back closes the descriptor of the
    parent's connection (as Celery's workers close what they inherited), and
    the number then holds a file of the child's own, before its first query.
    Invalidation at that query must leave the number alone: the child's
    file gets what the child writes to it, and nothing else. With Django's
    ENGINE, the query goes to the file's number, and fails (mysqlclient
    then closes the child's file)."""
    import tempfile

    monitor = setup(vendor, engine)
    parent = parent_of(monitor)
    number = connection("default").connection.fileno()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "own")

        def work() -> Result:
            os.close(number)
            own = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            if own != number:
                os.dup2(own, number)
                os.close(own)
            os.write(number, b"before\n")
            observations: Result = {"query_error": None}
            try:
                observations.update(own_session())
            except Exception as exc:
                observations["query_error"] = f"{type(exc).__name__}: {exc}"
            try:
                os.write(number, b"after\n")
                observations["write_error"] = None
            except OSError as exc:
                observations["write_error"] = str(exc)
            return observations

        result = run_child(work, libc_fork)
        with open(path, "rb") as written:
            result["own_file"] = written.read().decode("latin-1")
    return {**result, **parent.check()}


# Our code, where a signal handler can land during invalidation.
OUR_MODULES = ("registry.py", "silencing.py", "sqlite.py", "endpoints.py", "wrapper.py")


def handler_landing_at(line: int, handler: Callable[[], None], work: Callable[[], None]) -> bool:
    """Run work() with `handler` run, untraced, at the `line`-th line of our
    code only: a trace function plays a signal handler, deterministically.
    Whether it landed."""
    seen = [0]

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.endswith(OUR_MODULES):
            return None
        if event == "line":
            seen[0] += 1
            if seen[0] == line:
                sys.settrace(None)  # The handler itself is not traced.
                try:
                    handler()
                finally:
                    sys.settrace(tracer)
        return tracer

    sys.settrace(tracer)
    try:
        work()
    finally:
        sys.settrace(None)
    return seen[0] >= line


def at_every_line(child_landing_at: Callable[[int], Result], broken: Callable[[], bool], key: str) -> Result:
    """One child, forked behind Python's back, per line of our code the
    handler can land at: until it lands no more, a child fails, or broken()
    says the parent lost something (`key`: after which line)."""
    result: Result = {key: None}
    line = 0
    while True:
        line += 1
        child = run_child(functools.partial(child_landing_at, line), libc_fork)
        if "child_error" in child:
            result["child_error"] = child["child_error"]
            break
        if broken():
            result[key] = line
            break
        if not child["landed"]:
            break
    result["lines_tried"] = line
    return result


def signal_during_invalidation(vendor: str, engine: str) -> Result:
    """SQLite, the parent inside a write transaction (a hot rollback journal
    on disk), forked behind Python's back. The child's first act is
    connections.close_all(), which notices the fork and invalidates; a
    signal handler that runs connections.close_all() too lands between
    every two lines of that work. The inherited handle must never be
    closed: the parent then commits."""

    def close_all() -> None:
        from django.db import connections

        connections.close_all()

    def child_landing_at(line: int) -> Result:
        landed = handler_landing_at(line, close_all, close_all)
        close_all()  # Once more afterwards (the only time, with Django's ENGINE).
        return {"landed": landed}

    setup(vendor, engine)
    from django.db import connection, transaction

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode = DELETE")
        cursor.execute("CREATE TABLE forksafe_signal (v INTEGER)")
    result: Result = {"parent_commit_error": None}
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO forksafe_signal VALUES (1)")
            journal = str(connection.settings_dict["NAME"]) + "-journal"
            result["journal_before_fork"] = os.path.exists(journal)
            result.update(
                at_every_line(child_landing_at, lambda: not os.path.exists(journal), "journal_lost_after_landing_at")
            )
    except Exception as exc:
        result["parent_commit_error"] = f"{type(exc).__name__}: {exc}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM forksafe_signal")
        result["committed_rows"] = cursor.fetchone()[0]
    return result


def exit_signal_during_invalidation(vendor: str, engine: str) -> Result:
    """A child forked behind Python's back is told to stop (gunicorn's
    SIGQUIT handler calls sys.exit()) while its first query invalidates
    what it inherited: the handler's SystemExit lands between every two
    lines of that work, and the child then ends as an interpreter does, its
    exit hooks run and its objects freed. The parent's sessions must survive
    every landing, Django's and that of a driver connection it opened
    outside Django; with Django's ENGINE, the child's exit frees the
    parent's connection (its driver's goodbye: mysqlclient's COM_QUIT,
    psycopg2's Terminate)."""
    monitor = setup(vendor, engine)
    parent = parent_of(monitor)
    outside = [Monitor(vendor)]  # Freed in the child as it ends.
    outside_session = outside[0].query(SESSION_SQL[vendor])[0][0]

    def stop() -> None:
        raise SystemExit(0)

    def first_query() -> None:
        from django.db import connections

        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")

    def child_landing_at(line: int) -> Result:
        import atexit
        import gc

        from django.db import connections

        landed = True
        try:
            landed = handler_landing_at(line, stop, first_query)
        except SystemExit:
            pass
        # The interpreter's way out: its exit hooks, then it frees what is
        # left, Django's connections among it.
        atexit._run_exitfuncs()
        for wrapper in connections.all(initialized_only=True):
            wrapper.connection = None
        outside.clear()
        gc.collect()
        return {"landed": landed}

    def parent_lost() -> bool:
        try:  # A goodbye on the parent's socket is ahead of this query in its stream.
            return (
                session_id() != parent.session_id
                or outside[0].query(SESSION_SQL[vendor])[0][0] != outside_session
            )
        except Exception:
            return True

    result = at_every_line(child_landing_at, parent_lost, "parent_lost_after_landing_at")
    return {**result, **parent.check()}


def pool_close_returns(vendor: str, engine: str) -> Result:
    """Django's pool with psycopg_pool's close_returns=True, and another
    parent thread inside the pool (holding its lock) at the fork: the child
    must not give connections back to the inherited pool, and so not hang."""
    from tests.hazards.state import _pooled

    monitor = setup(vendor, engine, DATABASES=_pooled(vendor, engine, close_returns=True))
    from django.db import connection

    parent = parent_of(monitor)
    pool: Any = connection.pool  # type: ignore[attr-defined]
    held, release = threading.Event(), threading.Event()

    def hold_pool_lock() -> None:
        with pool._lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold_pool_lock)
    holder.start()
    held.wait()
    try:
        # The plain ENGINE's child waits forever on a lock no thread will
        # release: 10 s tells that from the few milliseconds it otherwise takes.
        result = child_report(*fork_child(_close_then_query), timeout=10)
    finally:
        release.set()
        holder.join()
    return {**result, **parent.check()}


def _close_then_query() -> Result:
    from django.db import connection

    connection.close()  # With Django's ENGINE: putconn() on the inherited pool.
    return {"child_session": session_id()}


def raw_connection_to(where: str) -> Callable[[str, str], Result]:
    """A driver connection the app opened outside Django, to the server its
    settings name by `where`: "hostname" (a name, not an address), "socket"
    (MySQL's Unix socket path as HOST), "hosts" (libpq's list). Before it, an
    odd socket (an abstract Unix name that is not UTF-8). The child closes
    the raw connection: that must never end the parent's session."""

    def scenario(vendor: str, engine: str) -> Result:
        config = dbconfig.server(vendor)
        backend = backend_of(engine)
        if backend is not None and backend.install_as_mysqldb:
            import pymysql

            pymysql.install_as_MySQLdb()  # Before _mysql_socket_path() imports MySQLdb.
        odd = _odd_unix_socket()
        host = {
            "hostname": socket.gethostname(),
            "socket": _mysql_socket_path(),
            "hosts": f"{config['HOST']},{config['HOST']}",
        }[where]
        port = f"{config['PORT']},{config['PORT']}" if where == "hosts" else config["PORT"]
        databases = {"default": dbconfig.database(vendor, engine, HOST=host, PORT=port)}
        setup(vendor, engine, DATABASES=databases)
        from django.db import connection

        connection.ensure_connection()  # Django's own, as the settings say.
        raw = _raw_connection(vendor, host if where != "hosts" else config["HOST"])
        cursor = raw.cursor()
        cursor.execute(SESSION_SQL[vendor])
        session = int(cursor.fetchone()[0])
        cursor.close()

        def work() -> Result:
            raw.close()  # Sends COM_QUIT / Terminate, unless silenced.
            return {"child_session": session_id()}

        result = run_child(work)
        result["raw_error"] = None
        try:
            cursor = raw.cursor()
            cursor.execute(SESSION_SQL[vendor])
            result["raw_same_session"] = int(cursor.fetchone()[0]) == session
        except Exception as exc:
            result["raw_error"] = f"{type(exc).__name__}: {exc}"
        result["raw_session_on_server"] = Monitor(vendor).alive(session)
        raw.close()
        odd.close()
        return result

    return scenario


def _odd_unix_socket() -> socket.socket:
    """A connected Unix socket whose peer's abstract name is not UTF-8."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(b"\0forksafe-\xff-" + str(os.getpid()).encode())
    listener.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    _keep.append(accepted)
    return client


_keep: list[socket.socket] = []


def _mysql_socket_path() -> str:
    monitor = Monitor("mysql")
    try:
        return str(monitor.query("SELECT @@socket")[0][0])
    finally:
        monitor.conn.close()


def _raw_connection(vendor: str, host: str) -> Any:
    config = dbconfig.server(vendor)
    if vendor == "mysql":
        import MySQLdb  # PyMySQL, where the ENGINE installed it as MySQLdb.

        where = {"unix_socket": host} if host.startswith("/") else {"host": host, "port": int(config["PORT"])}
        return MySQLdb.connect(user=config["USER"], password=config["PASSWORD"], database=config["NAME"], **where)
    try:
        import psycopg as driver
    except ImportError:
        import psycopg2 as driver  # type: ignore[no-redef]
    return driver.connect(
        host=host, port=config["PORT"], user=config["USER"], password=config["PASSWORD"] or None, dbname=config["NAME"]
    )

