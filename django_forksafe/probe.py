"""
One fork hazard, tried for real on one database alias, in a process of its
own: ``python -m django_forksafe.probe ALIAS HAZARD`` with the project's
DJANGO_SETTINGS_MODULE. Prints one JSON object: {"safe": bool, "detail": str}.
Run by the forksafe_check command; the hazards it tries are in HAZARDS.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

SESSION_SQL = {"mysql": "SELECT CONNECTION_ID()", "postgresql": "SELECT pg_backend_pid()"}
Report = dict[str, Any]


class Parent:
    """The parent's connection, and how to tell that it is still its own: the
    server session (or SQLite handle) and a temporary table only it sees.
    It holds no reference to the connection itself (but for SQLite's trace),
    so that what frees a connection in a child is not hidden."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        with self.connection.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE forksafe_probe (v INTEGER)")
            cursor.execute("INSERT INTO forksafe_probe VALUES (42)")
        self.session = self.session_id()
        self.raw_id = id(self.connection.connection)
        self.statements: list[str] = []
        self.sqlite_raw = None
        if self.connection.vendor == "sqlite":
            # SQLite's hazard is the child using or closing the parent's handle.
            self.sqlite_raw = self.connection.connection
            self.sqlite_raw.set_trace_callback(self.statements.append)

    @property
    def connection(self) -> Any:
        from django.db import connections

        return connections[self.alias]

    def session_id(self) -> object:
        if self.connection.vendor not in SESSION_SQL:
            return id(self.connection.connection)
        with self.connection.cursor() as cursor:
            cursor.execute(SESSION_SQL[self.connection.vendor])
            return cursor.fetchone()[0]

    def kept(self) -> tuple[bool, str]:
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT v FROM forksafe_probe")
                probe = cursor.fetchone()[0]
            same = id(self.connection.connection) == self.raw_id and self.session_id() == self.session
        except Exception as exc:
            return False, f"parent lost its session: {type(exc).__name__}: {exc}".splitlines()[0]
        if not same or probe != 42:
            return False, "parent was reconnected to a new session"
        return True, "parent kept its session"

    def before_fork(self) -> None:
        self.statements.clear()  # The child's copy then records only its own use.

    def child_touched_inherited(self) -> bool:
        """In the child: did it use or close the handle it inherited?"""
        if self.sqlite_raw is None:
            return False
        try:
            self.sqlite_raw.total_changes  # noqa: B018 - raises once the handle is closed
        except Exception:
            return True
        return bool(self.statements)


def fork_child(work: Callable[[], Report], go: int | None = None) -> tuple[int, int]:
    """Fork; the child runs `work`, writes its report to a pipe, and leaves
    without interpreter finalization. Returns (pid, read end)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if go is not None:
                os.read(go, 1)
            report = work()
        except BaseException as exc:  # Reported to the parent.
            report = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    return pid, read_end


def child_report(pid: int, read_end: int) -> Report:
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data) if data else {"error": "the child died"}


def verdict(parent: Parent, children: list[Report]) -> Report:
    safe, detail = parent.kept()
    for child in children:
        if child.get("touched_inherited"):
            return {"safe": False, "detail": "child used or closed the parent's SQLite handle"}
        if child.get("error"):
            return {"safe": False, "detail": f"child failed: {child['error']}".splitlines()[0]}
        if child.get("wrong"):
            return {"safe": False, "detail": f"child got {child['wrong']} wrong replies"}
        if child.get("shared_session"):
            return {"safe": False, "detail": "child ran on the parent's session"}
    return {"safe": safe, "detail": detail}


def child_closes(alias: str) -> Report:
    parent = Parent(alias)

    def work() -> Report:
        from django.db import connections

        connections[alias].close()
        return {"touched_inherited": parent.child_touched_inherited()}

    parent.before_fork()
    return verdict(parent, [child_report(*fork_child(work))])


def child_exits(alias: str) -> Report:
    """The child ends through sys.exit(): finalization frees what it holds."""
    parent = Parent(alias)
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # Unwinds through main(), which has no finally.
    os.waitpid(pid, 0)
    return verdict(parent, [])


def concurrent_use(alias: str) -> Report:
    parent = Parent(alias)
    go_read, go_write = os.pipe()

    def queries() -> Report:
        from django.db import connections

        connection, wrong = connections[alias], 0
        for i in range(100):
            token = f"{os.getpid()}-{i}"
            with connection.cursor() as cursor:
                cursor.execute("SELECT %s", [token])
                wrong += cursor.fetchone()[0] != token
        return {"wrong": wrong, "touched_inherited": parent.child_touched_inherited()}

    def child_work() -> Report:
        report = queries()
        report["shared_session"] = parent.session_id() == parent.session
        return report

    parent.before_fork()
    children = [fork_child(child_work, go=go_read) for _ in range(3)]
    os.write(go_write, b"g" * len(children))  # One byte for each child.
    mine = queries()
    reports = [child_report(*child) for child in children]
    if mine["wrong"]:
        return {"safe": False, "detail": f"parent got {mine['wrong']} wrong replies"}
    return verdict(parent, reports)


def fork_in_atomic(alias: str) -> Report:
    """The child leaves an atomic block it inherited; the parent rolls back."""
    from django.db import transaction

    parent = Parent(alias)
    with transaction.atomic(using=alias):
        with parent.connection.cursor() as cursor:
            cursor.execute("INSERT INTO forksafe_probe VALUES (7)")
        read_end, write_end = os.pipe()
        parent.before_fork()
        pid = os.fork()
        if pid:
            os.close(write_end)
            child = child_report(pid, read_end)
            transaction.set_rollback(True, using=alias)
    if pid == 0:  # The child, after the block.
        os.write(write_end, json.dumps({"touched_inherited": parent.child_touched_inherited()}).encode())
        os._exit(0)
    report = verdict(parent, [child])
    with parent.connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM forksafe_probe WHERE v = 7")
        if report["safe"] and cursor.fetchone()[0]:
            return {"safe": False, "detail": "child committed the parent's transaction"}
    return report


def other_thread(alias: str) -> Report:
    """Another thread holds a connection when the main thread forks."""
    opened, forked = threading.Event(), threading.Event()
    outcome: Report = {}

    def hold() -> None:
        try:
            parent = Parent(alias)
        except Exception as exc:
            outcome.update(safe=False, detail=f"{type(exc).__name__}: {exc}")
            opened.set()
            return
        opened.set()
        forked.wait()
        outcome.update(verdict(parent, []))
        parent.connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    opened.wait()

    def work() -> Report:
        gc.collect()  # Frees what CPython's fork left of the other thread.
        return {}

    child = child_report(*fork_child(work))
    forked.set()
    thread.join()
    return outcome if child.get("error") is None else {"safe": False, "detail": child["error"]}


def reachable(alias: str) -> Report:
    from django.db import connections

    connections[alias].ensure_connection()
    return {"safe": True, "detail": "reachable"}


HAZARDS: dict[str, Callable[[str], Report]] = {
    "child closes": child_closes,
    "child exits": child_exits,
    "concurrent use": concurrent_use,
    "fork inside atomic": fork_in_atomic,
    "other thread's connection": other_thread,
}


def main() -> None:
    import django

    alias, hazard = sys.argv[1:3]
    django.setup()
    try:
        report = reachable(alias) if hazard == "reachable" else HAZARDS[hazard](alias)
    except Exception as exc:
        report = {"safe": False, "detail": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
