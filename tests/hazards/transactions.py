"""Transactions: a child forked inside atomic() is a process of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from typing import Any

from django_forksafe.hazards import child_report, session_id
from tests import dbconfig
from tests.hazards.common import SCENARIO_PID, Result, setup


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
                    result.update(child_report(pid, read_end))
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
        if os.getpid() == SCENARIO_PID:
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
        if os.getpid() == SCENARIO_PID:
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
        workers = 2 if dbconfig.is_forksafe(engine) else 1
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
