"""
Detection: forks that skip Python's at-fork handlers, noticed at the child's
first use of anything; post_fork; locks held by other threads at fork time.
"""

from __future__ import annotations

import gc
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from django_forksafe.hazards import Parent, child_report, libc_fork, own_session, run_child, session_id
from tests.hazards.common import Result, parent_of, setup


def _drop_then_request(parent: Parent) -> None:
    # Garbage before detection: the registry keeps the raw connection
    # alive, so mysqlclient's deallocator cannot run.
    from django.core.signals import request_started
    from django.db import connections

    del connections["default"]  # The parent's Parent holds no reference either.
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
        parent = parent_of(monitor)

        def work() -> Result:
            return own_session(first=lambda: LIBC_FORK_TRIGGERS[trigger](parent))

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
        parent = parent_of(monitor)
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


def post_fork_in_grandchild(vendor: str, engine: str) -> Result:
    """A daemonizing double fork: a child that never uses the database forks
    a grandchild and leaves at once. The grandchild, once its parent is gone,
    connects a post_fork receiver and queries: post_fork names that parent
    (with the C extension, the child ran no Python at its fork, no receiver
    wanting it; and by then its pid is no longer the grandchild's getppid())."""
    monitor = setup(vendor, engine)
    parent = parent_of(monitor)
    report_read, report_write = os.pipe()

    def grandchild(middle: int, middle_gone: int) -> Result:
        from django_forksafe.signals import post_fork

        os.read(middle_gone, 1)  # End of file: the middle process has exited.
        heard: list[int] = []

        def receiver(sender: object, parent_pid: int, aliases: list[str], **kwargs: Any) -> None:
            heard.append(parent_pid)

        post_fork.connect(receiver, weak=False)
        return {**own_session(), "heard_parent_pids": heard, "middle_pid": middle}

    pid = os.fork()
    if pid == 0:  # The middle process.
        os.close(report_read)
        middle = os.getpid()
        gone_read, gone_write = os.pipe()
        if os.fork() == 0:
            os.close(gone_write)
            try:
                observations = grandchild(middle, gone_read)
            except BaseException as exc:
                observations = {"child_error": f"{type(exc).__name__}: {exc}"}
            os.write(report_write, json.dumps(observations).encode())
            os._exit(0)
        os._exit(0)  # At once, as a daemonizing parent does.
    os.close(report_write)
    os.waitpid(pid, 0)
    with os.fdopen(report_read) as report:
        result: Result = json.loads(report.read() or '{"child_error": "no report"}')
    return {**result, **parent.check()}


def registry_lock_held_at_fork(vendor: str, engine: str) -> Result:
    """A process forked behind Python's back (P) notices it in one thread,
    which is still inside the invalidation (held in a post_fork receiver)
    when P's main thread forks again: the grandchild's first query must not
    wait for a thread that does not exist in it."""
    from django_forksafe import registry
    from django_forksafe.signals import post_fork

    monitor = setup(vendor, engine)
    parent = parent_of(monitor)

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
                os.write(write_end, json.dumps(own_session()).encode())
                os._exit(0)
            os.close(write_end)
            return child_report(pid, read_end, timeout=30)
        finally:
            release.set()
            thread.join()

    return {**run_child(middle, fork=libc_fork), **parent.check(), "parent_session": parent.session_id}


def signal_lock_held_at_fork(vendor: str, engine: str) -> Result:
    """Another thread holds post_fork's lock (connecting a receiver) when the
    main thread forks: the at-fork handler sends post_fork in the child."""
    from django_forksafe.signals import post_fork

    monitor = setup(vendor, engine)
    parent = parent_of(monitor)
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
            os.write(write_end, json.dumps(own_session()).encode())
            os._exit(0)
        os.close(write_end)
        result = child_report(pid, read_end, timeout=30)
    finally:
        release.set()
        thread.join()
    return {**result, **parent.check(), "parent_session": parent.session_id}


def out_of_descriptors(vendor: str, engine: str) -> Result:
    """A child forked behind Python's back has no descriptor left when it
    first queries. The inherited connection must be forgotten all the same."""
    import resource

    monitor = setup(vendor, engine)
    parent = parent_of(monitor)

    def work() -> Result:
        from django.db import connection

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        filler = []
        try:
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            session_id()
            first_query = "succeeded"
        except Exception as exc:
            first_query = f"{type(exc).__name__}: {exc}"
        holds_inherited = id(connection.connection) == parent.raw_id
        for fd in filler:
            os.close(fd)
        return {"first_query": first_query, "holds_inherited": holds_inherited, **own_session()}

    return {**run_child(work, fork=libc_fork), **parent.check()}
