"""The fork-safe DatabaseWrapper mixin, and forksafe() which applies it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.signals import request_started
from django.db.backends.base.base import BaseDatabaseWrapper

from django_forksafe import conf, registry

WrapperClass = TypeVar("WrapperClass", bound=type[BaseDatabaseWrapper])


class ForkSafeMixin(BaseDatabaseWrapper):
    """
    Records which process opened each connection, and lets a child process
    drop inherited connections without sending anything to the server.

    Nothing here runs per query unless FORKSAFE_STRICT is on: children are
    cleaned up by the at-fork handler (see registry), and forks that skip it
    are noticed on the next request, close() or new connection.
    """

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        # Forked behind Python's back and not yet noticed: invalidate what was
        # inherited before this process's own connections join the record.
        registry.invalidate_if_forked()
        connection = super().get_new_connection(conn_params)
        if not self._forksafe_shares_nothing_with_children():
            registry.track(self, connection)
        pool = getattr(self, "pool", None)  # Django's PostgreSQL connection pool.
        if pool is not None:
            registry.track_pool(pool)
        return connection

    def connect(self) -> None:
        strict = conf.strict()  # Fail on a bad setting before opening anything.
        previous = self.connection
        super().connect()
        if previous is not None:  # Replaced without close(): left to the GC, as by Django.
            registry.untrack(previous)
        health_checks: bool = self.health_check_enabled  # type: ignore[attr-defined]
        for name in _STRICT_CHECKED:
            if strict and (health_checks or name != "close_if_health_check_failed"):
                # Instance attributes, so that the default mode adds no call
                # to every query.
                vars(self)[name] = _checking_pid(getattr(super(), name))
            else:
                vars(self).pop(name, None)

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
        # Before Django's health check can ping the server over a shared socket.
        registry.invalidate_if_forked()
        super().close_if_unusable_or_obsolete()

    def _forksafe_shares_nothing_with_children(self) -> bool:
        # An in-memory SQLite database has no socket or file to share: a child
        # keeps using its private copy, as Django's parallel test runner does.
        is_in_memory_db = getattr(self, "is_in_memory_db", None)
        return callable(is_in_memory_db) and bool(is_in_memory_db())

    def _forksafe_forget_connection(self) -> None:
        # Django's close() without the server round trip: inside an atomic
        # block the connection counts as closed in the transaction (queries
        # raise, leaving the block sends neither COMMIT nor ROLLBACK), and the
        # next connect() after the outermost block starts afresh.
        self.run_on_commit = []
        if self.in_atomic_block:
            self.closed_in_transaction = True
            self.needs_rollback = True
        self.connection = None


# What FORKSAFE_STRICT checks the process ID before: every way Django reaches
# the raw connection outside close() (cursors, health checks when
# CONN_HEALTH_CHECKS is on, transactions).
_STRICT_CHECKED = ("ensure_connection", "close_if_health_check_failed", "_commit", "_rollback")


def _checking_pid(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(*args: Any, **kwargs: Any) -> Any:
        registry.invalidate_if_forked()
        return method(*args, **kwargs)

    return checked


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
    pools = getattr(wrapper_class, "_connection_pools", None)  # Django's PostgreSQL pools.
    if isinstance(pools, dict):
        registry.watch_pools(pools)
    namespace = {
        "__module__": sys._getframe(1).f_globals.get("__name__", __name__),
        "__qualname__": wrapper_class.__qualname__,
        "__doc__": f"Fork-safe {wrapper_class.__module__}.{wrapper_class.__qualname__}.",
    }
    return type(wrapper_class.__name__, (ForkSafeMixin, wrapper_class), namespace)  # type: ignore[return-value]


def _invalidate_if_forked(**kwargs: Any) -> None:
    registry.invalidate_if_forked()


request_started.connect(_invalidate_if_forked, dispatch_uid="django_forksafe.invalidate_if_forked")
