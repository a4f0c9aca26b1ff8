"""
The process-wide record of open raw connections, and their silent invalidation
in a child process.

Invalidation never sends a byte to the server: a socket shared with the parent
is pointed at /dev/null before the driver frees the connection, and a handle
without a socket (SQLite's files) is never touched again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django_forksafe.signals import post_fork

if TYPE_CHECKING:
    from django_forksafe.wrapper import ForkSafeMixin

logger = logging.getLogger("django_forksafe")


@dataclass(frozen=True)
class Invalidation:
    """What invalidate_inherited() did in this process."""

    parent_pid: int
    aliases: list[str]


@dataclass(frozen=True)
class _OpenConnection:
    raw: Any
    pid: int
    wrapper_ref: weakref.ref[ForkSafeMixin]


@dataclass(frozen=True)
class _OpenPool:
    pools: dict[str, Any]  # Where Django keeps it: DatabaseWrapper._connection_pools.
    alias: str
    pool_ref: weakref.ref[Any]
    pid: int


# Strong references on purpose. In a child, CPython clears the other threads'
# state (and with it their thread-local DatabaseWrappers) before at-fork
# handlers run; holding the raw connections here keeps a driver's deallocator
# (mysqlclient sends COM_QUIT) from running before the socket is redirected.
_open_connections: dict[int, _OpenConnection] = {}

# Connection pools (Django >= 5.1, PostgreSQL), weakly: Django holds them.
_open_pools: dict[int, _OpenPool] = {}

# The process that last invalidated inherited connections (or imported us).
# Comparing it with os.getpid() detects forks that skipped at-fork handlers.
_known_pid = os.getpid()


def track(wrapper: ForkSafeMixin, raw: Any) -> None:
    """Record a raw connection that `wrapper` has just opened."""
    key = id(raw)

    def forget(_ref: weakref.ref[ForkSafeMixin]) -> None:
        # The wrapper was collected without close(). In the opening process,
        # let the driver close the connection as plain Django would; in a
        # child, leave it for invalidate_inherited() to silence first.
        entry = _open_connections.get(key)
        if entry is not None and entry.pid == os.getpid():
            del _open_connections[key]

    _open_connections[key] = _OpenConnection(raw, os.getpid(), weakref.ref(wrapper, forget))


def track_pool(pools: dict[str, Any], alias: str, pool: Any) -> None:
    """Record a connection pool that `pools[alias]` holds."""
    key = id(pool)
    if key not in _open_pools:
        ref = weakref.ref(pool, lambda _ref: _open_pools.pop(key, None))
        _open_pools[key] = _OpenPool(pools, alias, ref, os.getpid())


def untrack(raw: Any) -> None:
    """Forget a raw connection its own process has closed."""
    _open_connections.pop(id(raw), None)


def invalidate_if_forked() -> Invalidation | None:
    """Invalidate inherited connections if this process forked unnoticed."""
    if os.getpid() == _known_pid:
        return None
    return invalidate_inherited()


def invalidate_inherited() -> Invalidation:
    """
    In a new process: silence every recorded connection opened by another
    process, reset the DatabaseWrappers that held them so they reconnect
    lazily, then send post_fork.
    """
    global _known_pid
    pid = os.getpid()
    parent_pid, _known_pid = _known_pid, pid
    inherited = [entry for entry in list(_open_connections.values()) if entry.pid != pid]
    inherited_pools = [(key, entry) for key, entry in list(_open_pools.items()) if entry.pid != pid]
    aliases: list[str] = []
    if inherited or inherited_pools:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for entry in inherited:
                del _open_connections[id(entry.raw)]
                _silence(entry.raw, devnull)
                wrapper = entry.wrapper_ref()
                if wrapper is not None and wrapper.connection is entry.raw:
                    wrapper._forksafe_forget_connection()
                    aliases.append(wrapper.alias)
            for key, pool_entry in inherited_pools:
                del _open_pools[key]
                _forget_pool(pool_entry, devnull)
        finally:
            os.close(devnull)
    if parent_pid != pid:
        for receiver, result in post_fork.send_robust(None, parent_pid=parent_pid, aliases=aliases):
            if isinstance(result, Exception):
                logger.error("post_fork receiver %r failed", receiver, exc_info=result)
    return Invalidation(parent_pid, aliases)


def _forget_pool(entry: _OpenPool, devnull: int) -> None:
    # The pool's threads did not survive the fork and its idle connections
    # are the parent's sessions: never close() it or let its __del__ run.
    # Without it in Django's dict, the child lazily makes a pool of its own.
    pool = entry.pool_ref()
    if pool is None:
        return
    if entry.pools.get(entry.alias) is pool:
        del entry.pools[entry.alias]
    for idle in list(getattr(pool, "_pool", ())):  # psycopg_pool's idle connections.
        _silence(idle, devnull)
    _keep_forever(pool)


def _keep_forever(obj: Any) -> None:
    """Never free `obj`, so that no deallocator of it runs in this process."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _silence(raw: Any, devnull: int) -> None:
    try:
        fd = raw.fileno()
    except Exception:  # No such method (SQLite), or a broken connection.
        fd = -1
    if not isinstance(fd, int) or fd < 0:
        # Nothing to redirect: the driver must never touch this handle again,
        # not even from its deallocator at interpreter exit. SQLite's rule
        # for handles opened before fork() is exactly that.
        _keep_forever(raw)
        return
    # Redirect rather than os.close(): the descriptor number stays taken until
    # the driver's own close(), whose goodbye (COM_QUIT, Terminate, TLS
    # close_notify) and shutdown() now go nowhere.
    os.dup2(devnull, fd, inheritable=False)
    with contextlib.suppress(Exception):
        raw.close()


os.register_at_fork(after_in_child=invalidate_inherited)
