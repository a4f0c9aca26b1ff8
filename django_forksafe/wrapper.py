"""The fork-safe DatabaseWrapper mixin, and forksafe() which applies it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.signals import request_started
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.asyncio import async_unsafe

from django_forksafe import pools, registry, sockets
from django_forksafe.detection import PROCESS_MARK
from django_forksafe.transactions import AtomicBlocks

WrapperClass = TypeVar("WrapperClass", bound=type[BaseDatabaseWrapper])


class ForkSafeMixin(BaseDatabaseWrapper):
    """
    Records which process opened each connection, and lets a child process
    drop inherited connections without sending anything to the server.

    Forks through Python are handled by the at-fork handler (see registry).
    Every other fork is noticed at the next checkout, before any byte is
    sent: each way Django reaches the raw connection (a cursor, a new
    connection, autocommit, commit and rollback, the health-check ping,
    close(), leaving an atomic block) first reads the process mark (see
    detection), one memory load. ensure_connection() itself, which sends
    nothing on an open connection, is left as it is: tests patch it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sockets.remember_settings(self.vendor, self.settings_dict)
        pools.created(self)

    @property
    def atomic_blocks(self) -> AtomicBlocks:
        return self._forksafe_atomic_blocks

    @atomic_blocks.setter
    def atomic_blocks(self, blocks: list[Any]) -> None:
        # Django's __init__() and connect() assign plain lists.
        self._forksafe_atomic_blocks = AtomicBlocks(blocks)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if ForkSafeMixin in cls.__bases__ and "cursor" not in vars(cls):
            # The query path: cursor(), and through it chunked_cursor(),
            # savepoints, schema editors, introspection.
            next_class = cls.__mro__[cls.__mro__.index(ForkSafeMixin) + 1]
            cls.cursor = _checked_cursor(next_class)  # type: ignore[method-assign,assignment]

    def chunked_cursor(self) -> Any:
        # PostgreSQL's server-side cursors go to _cursor() without cursor().
        registry.invalidate_if_forked()
        return super().chunked_cursor()

    def connect(self) -> None:
        # Also reached without a cursor: ensure_connection(), get_autocommit().
        registry.invalidate_if_forked()
        previous = self.connection
        super().connect()
        if previous is not None:  # Replaced without close(): left to the GC, as by Django.
            registry.untrack(previous)

    def set_autocommit(self, *args: Any, **kwargs: Any) -> None:
        # Atomic blocks start here; it talks to the server once connected.
        registry.invalidate_if_forked()
        super().set_autocommit(*args, **kwargs)

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        if not self._forksafe_shares_nothing_with_children():
            registry.track(self, connection)
            sockets.remember_peer(connection)
        pool = getattr(self, "pool", None)  # Django's PostgreSQL connection pool.
        if pool is not None:
            registry.track_pool(pool)
        return connection

    def is_usable(self) -> bool:
        # The CONN_HEALTH_CHECKS ping, and close_if_unusable_or_obsolete()'s.
        registry.invalidate_if_forked()
        if self.connection is None:  # It was inherited and is now forgotten.
            return False
        return super().is_usable()

    def _commit(self) -> None:
        registry.invalidate_if_forked()
        super()._commit()  # type: ignore[misc]  # Not in django-stubs.

    def _rollback(self) -> None:
        registry.invalidate_if_forked()
        super()._rollback()  # type: ignore[misc]  # Not in django-stubs.

    def _close(self) -> None:
        registry.invalidate_if_forked()
        connection = self.connection
        if connection is None:  # It was inherited and is now forgotten.
            return
        # First: a pool may hand the connection to another thread, which
        # records it again, the moment Django gives it back.
        registry.untrack(connection)
        super()._close()  # type: ignore[misc]  # Not in django-stubs.

    def close_if_unusable_or_obsolete(self) -> None:
        # Before Django's get_autocommit() would open a new connection to
        # replace one it has just found inherited.
        registry.invalidate_if_forked()
        super().close_if_unusable_or_obsolete()

    def _forksafe_shares_nothing_with_children(self) -> bool:
        # An in-memory SQLite database has no socket or file to share: a child
        # keeps using its private copy, as Django's parallel test runner does.
        is_in_memory_db = getattr(self, "is_in_memory_db", None)
        return callable(is_in_memory_db) and bool(is_in_memory_db())

    def _forksafe_forget_connection(self) -> None:
        """
        Drop the inherited connection without a round trip, and leave the
        parent's transaction behind: the child starts outside any atomic
        block, in autocommit once it reconnects, with no on_commit callbacks
        of its parent (see transactions).
        """
        # With closed_in_transaction, leaving an inherited block (or one whose
        # exit is already under way, see AtomicBlocks) neither queries nor
        # reconnects; connect() clears it.
        self.closed_in_transaction = self.in_atomic_block
        self.connection = None
        self.in_atomic_block = False
        self.savepoint_ids = []
        self.atomic_blocks = []
        self.commit_on_exit = True
        self.needs_rollback = False
        self.run_on_commit = []
        self.run_commit_hooks_on_set_autocommit_on = False
        self.autocommit = False  # As before the first connect().
        self.errors_occurred = False
        self.health_check_done = False


def _checked_cursor(next_class: type) -> Callable[[Any], Any]:
    """cursor(), checking the process mark first: one memory load and one
    branch in a process that did not fork."""
    if next_class.cursor is BaseDatabaseWrapper.cursor:  # type: ignore[attr-defined]
        # Django's own cursor() is `return self._cursor()` under async_unsafe.
        # Written out here rather than called through super(), which would
        # add a frame to every query: 1,300 more instructions per SQLite
        # query (2.4 %), against 280 (0.5 %) this way, counted by callgrind.
        @async_unsafe
        def cursor(self: Any) -> Any:
            if not PROCESS_MARK[0]:
                registry.invalidate_if_forked()
            return self._cursor()

        return cursor

    def checked_cursor(self: Any) -> Any:  # Around a backend's own cursor().
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        return next_class.cursor(self)  # type: ignore[attr-defined]  # Looked up each call, as by super().

    return checked_cursor


def forksafe(wrapper_class: WrapperClass) -> WrapperClass:
    """
    Return a fork-safe subclass of a backend's DatabaseWrapper class.

    A third-party backend becomes fork-safe with a base.py of its own::

        from some_backend import base
        from django_forksafe import forksafe
        DatabaseWrapper = forksafe(base.DatabaseWrapper)
    """
    if not (isinstance(wrapper_class, type) and issubclass(wrapper_class, BaseDatabaseWrapper)):
        raise TypeError(
            "forksafe() takes a database wrapper class, a subclass of "
            "django.db.backends.base.base.BaseDatabaseWrapper such as a "
            f"backend's base.DatabaseWrapper; got {wrapper_class!r} "
            f"(of type {type(wrapper_class).__qualname__})."
        )
    if issubclass(wrapper_class, ForkSafeMixin):
        return wrapper_class
    django_pools = getattr(wrapper_class, "_connection_pools", None)  # Django's PostgreSQL pools.
    if isinstance(django_pools, dict):
        registry.watch_pools(django_pools)
    pools.adapt(wrapper_class)
    namespace = {
        "__module__": sys._getframe(1).f_globals.get("__name__", __name__),
        "__qualname__": wrapper_class.__qualname__,
        "__doc__": f"Fork-safe {wrapper_class.__module__}.{wrapper_class.__qualname__}.",
    }
    return type(wrapper_class.__name__, (ForkSafeMixin, wrapper_class), namespace)  # type: ignore[return-value]


def _invalidate_if_forked(**kwargs: Any) -> None:
    registry.invalidate_if_forked()


request_started.connect(_invalidate_if_forked, dispatch_uid="django_forksafe.invalidate_if_forked")
