"""Connection pools in a child: Django's PostgreSQL pool, and third-party pools."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from django_forksafe.hazards import Fork, child_report, fork_child, run_child, session_id
from tests import dbconfig
from tests.backends import POOL_OPTIONS, backend_of
from tests.hazards.common import Monitor, Result, client_port, parent_of, setup


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
    parent = parent_of(monitor)
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


CLIENT_PORT_SQL = {
    "mysql": "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()",
    "postgresql": "SELECT client_port FROM pg_stat_activity WHERE pid = pg_backend_pid()",
}


def session_and_port(vendor: str) -> tuple[int, int]:
    """This process's session id and its client port, as the server sees them."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(CLIENT_PORT_SQL[vendor])
        port = client_port(cursor.fetchone()[0])
    assert port is not None, "connected over TCP"
    return session_id(), port


POOL_SIZE = POOL_OPTIONS["POOL_SIZE"]  # As tests.backends configures every pool.


def hold_whole_pool() -> tuple[list[int], list[str]]:
    """POOL_SIZE threads each take a connection at once, then give it back:
    every connection of the pool in use together, none handed out twice.
    Returns the sessions they ran on and the errors they met."""
    from django.db import connection, connections

    # The wrapper's class, not django.db.connection's: that is a proxy (the
    # threads below then met gevent's queue and semaphore, and one of them
    # now and then waited for ever: a loaded run's 300 s hang).
    if any(klass.__module__.startswith("django_db_geventpool.") for klass in type(connections["default"]).__mro__):
        return hold_whole_gevent_pool()

    holding = threading.Barrier(POOL_SIZE)
    sessions: list[int] = []
    errors: list[str] = []

    def hold() -> None:
        try:
            sessions.append(session_id())
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            try:
                holding.wait(timeout=60)
            finally:
                connection.close()  # Back to the pool.

    threads = [threading.Thread(target=hold) for _ in range(POOL_SIZE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(sessions), errors


def hold_whole_gevent_pool() -> tuple[list[int], list[str]]:
    """hold_whole_pool() for django-db-geventpool, in this thread: POOL_SIZE
    wrappers of the alias each take a connection, then give it back. Its
    pool is gevent's queue, and its lock gevent's semaphore, meant for
    greenlets: taken by several threads at once, they left one waiting for
    ever (a loaded CI run; the pool checks the queue's size, then blocks
    on get() if another thread took the last one meanwhile)."""
    from django.db import connections

    from django_forksafe.hazards import SESSION_SQL

    wrappers = [connections.create_connection("default") for _ in range(POOL_SIZE)]
    sessions: list[int] = []
    errors: list[str] = []
    try:
        for wrapper in wrappers:
            try:
                with wrapper.cursor() as cursor:
                    cursor.execute(SESSION_SQL[wrapper.vendor])
                    sessions.append(int(cursor.fetchone()[0]))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        for wrapper in wrappers:
            wrapper.close()  # Back to the pool.
    return sorted(sessions), errors


def fill_pool() -> list[int]:
    """The pool's idle sessions, once every connection of it has been used."""
    sessions, errors = hold_whole_pool()
    assert not errors and len(set(sessions)) == POOL_SIZE, (sessions, errors)
    return sessions


def check_pool_after(result: Result, monitor: Monitor) -> None:
    """Whether the parent's pool still holds its sessions. Using each of them
    is what tells: a goodbye the child sent on one arrives before the
    parent's next query on the same socket (the server's listing lags)."""
    result["parent_pool_alive"] = set(result["parent_pool"]) <= monitor.sessions()
    result["parent_pool_after"], result["parent_errors"] = hold_whole_pool()


def third_party_pool(child_only_exits: bool = False) -> Callable[[str, str], Result]:
    """A third-party pool (ENGINE one of tests.backends' with a pool) holds
    POOL_SIZE idle sessions when the parent forks. The child either queries
    (twice, giving its connection back in between) or only exits through
    interpreter finalisation (which frees the inherited pool)."""

    def scenario(vendor: str, engine: str) -> Result:
        backend = backend_of(engine)
        assert backend is not None and backend.pool is not None, f"{engine} has no pool of its own"
        monitor = setup(vendor, engine)
        assert monitor is not None
        from django.db import connection

        parent_pool = fill_pool()
        parent_ports = [port for session, port in monitor.client_ports().items() if session in parent_pool]

        def pool_identity() -> int:
            if backend.pool == "connpool":
                from dj_db_conn_pool.core import pool_container

                return id(pool_container.get("default"))
            return id(connection.pool)  # type: ignore[attr-defined]  # Cached on the wrapper too.

        inherited_pool = pool_identity()
        if child_only_exits:
            monitor.conn.close()  # A driver connection too: see basic.child_exits.
            pid = os.fork()
            if pid == 0:
                sys.exit(0)
            _, status = os.waitpid(pid, 0)
            child: Result = {"child_exit_status": os.waitstatus_to_exitcode(status)}
            monitor = Monitor(vendor)
        else:

            def work() -> Result:
                first = session_and_port(vendor)
                connection.close()
                second = session_and_port(vendor)
                return {
                    "sessions": [first[0], second[0]],
                    "client_ports": [first[1], second[1]],
                    "fresh_pool": pool_identity() != inherited_pool,
                }

            child = child_report(*fork_child(work))
        result: Result = {**child, "parent_pool": parent_pool, "parent_pool_ports": sorted(parent_ports)}
        with monitor:
            check_pool_after(result, monitor)
        return result

    return scenario


def unknown_pool(drop_in_post_fork: bool = False, fork: Fork = os.fork) -> Callable[[str, str], Result]:
    """A pool no adapter knows (tests.backends.unknown_pool, MySQL) holds
    POOL_SIZE idle sessions when the parent forks. The child takes a
    connection from it, then ends through interpreter finalisation, which
    frees the pool. The socket layer alone keeps the parent's sessions out of
    the child's reach: the child gets "server closed the connection" from the
    inherited idle connection, and the parent's sessions all live on. With
    `drop_in_post_fork`, docs/adapters.rst's post_fork receiver empties the
    pool, and the child opens a session of its own (through libc's fork too:
    post_fork is sent at the first checkout, before the pool is asked)."""

    def scenario(vendor: str, engine: str) -> Result:
        assert vendor == "mysql", "the unknown pool is a MySQL one"
        monitor = setup(vendor, engine)
        assert monitor is not None
        if drop_in_post_fork:
            import tests.backends.unknown_pool.receivers  # noqa: F401  # Connects the receiver.
        parent_pool = fill_pool()
        monitor.conn.close()  # A driver connection too: see basic.child_exits.
        read_end, write_end = os.pipe()
        pid = fork()
        if pid == 0:
            os.close(read_end)
            try:
                report: Result = {"child_session": session_id()}
            except Exception as exc:
                report = {"child_query_error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(report).encode())
            sys.exit(0)
        os.close(write_end)
        result: Result = {**child_report(pid, read_end), "parent_pool": parent_pool}
        with Monitor(vendor) as monitor:
            check_pool_after(result, monitor)
        return result

    return scenario


def pool_beside_plain_alias(vendor: str, engine: str) -> Result:
    """Django keeps its pools in one class-level dict, shared by every
    PostgreSQL alias, fork-safe or not: a child drops the plain alias's
    inherited pool too, and both aliases get sessions of the child's own."""
    options = {"pool": {"min_size": 2, "max_size": 3, "timeout": 5}}
    databases = {
        "default": dbconfig.database("postgresql", engine, OPTIONS=options),
        "plain": dbconfig.database("postgresql", "plain", OPTIONS=options),
    }
    monitor = setup("postgresql", engine, DATABASES=databases)
    assert monitor is not None
    from django.db import connections

    before = monitor.sessions()
    for alias in databases:
        connection: Any = connections[alias]
        connection.pool.open(wait=True, timeout=10)
        session_id(alias)
        connection.close()
    parent_pools = monitor.sessions() - before
    child = run_child(lambda: {alias: session_id(alias) for alias in databases})
    result: Result = {**child, "parent_pools": sorted(parent_pools)}
    result["parent_pools_alive"] = parent_pools <= monitor.sessions()
    for alias in databases:
        connections[alias].close_pool()  # type: ignore[attr-defined]
    return result
