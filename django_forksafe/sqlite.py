"""
SQLite handles a child inherits.

SQLite's rule for fork(): a handle opened before it must never be used or
closed in the child (closing it can roll back and delete the parent's hot
journal). An inherited handle is therefore kept for good and refuses to
prepare anything: a cursor held across the fork then fails ("not
authorized") instead of running on the parent's handle.

SQLite's in-process lock table comes along with the handle: a child forked
while its parent held a transaction on a database can never write to it
(it would wait its whole busy timeout, then say "database is locked", for
life). Its connections to that file refuse writes at once with an error
that says why; reads keep working.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

# Authorizer action codes that write (sqlite3.h).
_WRITES = frozenset(
    {1, 2, 3, 4, 5, 6, 7, 8}  # CREATE_*
    | {9, 18, 23}  # DELETE, INSERT, UPDATE
    | {10, 11, 12, 13, 14, 15, 16, 17}  # DROP_*
    | {26, 27, 28, 29, 30}  # ALTER_TABLE, REINDEX, ANALYZE, CREATE/DROP_VTABLE
)
_DENY = 1
_OK = 0

# Files (device, inode) that a transaction of the parent holds in this process.
_locked_files: dict[tuple[int, int], str] = {}


def is_sqlite(raw: Any) -> bool:
    return type(raw).__module__ in ("sqlite3", "_sqlite3") or any(
        klass.__module__ in ("sqlite3", "_sqlite3") for klass in type(raw).__mro__
    )


def retire_inherited(raw: Any, database: str | None) -> None:
    """In a child: make an inherited handle refuse to run anything, and
    remember its file if the parent held a transaction on it."""
    with contextlib.suppress(Exception):
        if raw.in_transaction and database:
            _locked_files[_file_id(database)] = database
    with contextlib.suppress(Exception):
        # Every statement is refused when prepared, and never runs: setting an
        # authorizer expires the handle's prepared statements, so a held
        # cursor's next execute(), COMMIT and ROLLBACK included, is prepared
        # anew and refused too. Not a progress handler: SQLite rolls back the
        # whole transaction of an interrupted write, which would play back and
        # delete the parent's journal from the child. (A SELECT already under
        # way still hands out its rows: reading changes nothing.)
        raw.set_authorizer(_refuse_all)


def _refuse_all(*args: object) -> int:
    return _DENY


def _file_id(database: str) -> tuple[int, int]:
    status = os.stat(database)
    return (status.st_dev, status.st_ino)


def guard_new_connection(raw: Any, database: str) -> str | None:
    """On a connection this process has just opened: if the parent held a
    transaction on its file at the fork, refuse writes at once. Returns why."""
    if not _locked_files:
        return None
    try:
        locked = _locked_files.get(_file_id(database))
    except (OSError, TypeError, ValueError):  # In memory, or gone.
        return None
    if locked is None:
        return None

    def authorizer(action: int, *args: Any) -> int:
        return _DENY if action in _WRITES else _OK

    raw.set_authorizer(authorizer)
    return (
        f"this process was forked while its parent held a transaction on {locked!r}; "
        "SQLite cannot release it in this process, which can therefore never write to "
        "that database. Fork outside the transaction (see django-forksafe's README, SQLite)."
    )


def refuse_writes_clearly(wrapper: Any, reason: str) -> None:
    """Have `wrapper`'s cursors say `reason` where SQLite says "not authorized"
    (this wrapper only: other processes and wrappers keep Django's cursors)."""
    import sqlite3

    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    @contextlib.contextmanager
    def explained() -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if str(exc) == "not authorized":  # Our authorizer's refusal.
                raise sqlite3.OperationalError(reason) from exc
            raise

    class ForkedSQLiteCursorWrapper(SQLiteCursorWrapper):
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            with explained():
                return super().execute(*args, **kwargs)

        def executemany(self, *args: Any, **kwargs: Any) -> Any:
            with explained():
                return super().executemany(*args, **kwargs)

    def create_cursor(name: Any = None) -> Any:
        return wrapper.connection.cursor(factory=ForkedSQLiteCursorWrapper)

    wrapper.create_cursor = create_cursor
