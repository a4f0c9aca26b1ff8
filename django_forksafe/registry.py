"""
The process-wide record of open raw connections, and their silent invalidation
in a child process.

Invalidation never sends a byte to the server: a socket shared with the parent
is pointed at /dev/null before the driver frees the connection, and a handle
without a socket (SQLite's files) is never touched again.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django_forksafe import sockets
from django_forksafe.detection import PROCESS_MARK
from django_forksafe.pools import forget_inherited_pools, keep_forever
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


# Strong references on purpose. In a child, CPython clears the other threads'
# state (and with it their thread-local DatabaseWrappers) before at-fork
# handlers run; holding the raw connections here keeps a driver's deallocator
# (mysqlclient sends COM_QUIT) from running before the socket is redirected.
_open_connections: dict[int, _OpenConnection] = {}

# Where Django keeps connection pools (>= 5.1, PostgreSQL): the class-level
# DatabaseWrapper._connection_pools dicts of the wrapper classes we made.
_pool_dicts: dict[int, dict[str, Any]] = {}
# The process each pool we have taken connections from was opened in, by id
# (weakly: Django holds the pools). A pool missing here dates from before the
# fork too, say one a master warmed up with pool.open().
_pool_pids: dict[int, int] = {}

# Serialise invalidation between the threads of one process, when a fork is
# noticed after the fact. One lock per process: a lock that another thread
# held when the process forked stays held in the child for ever.
_invalidation_locks: dict[int, threading.Lock] = {}

# The process that last invalidated inherited connections (or imported us):
# the parent_pid of post_fork.
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


def watch_pools(pools: dict[str, Any]) -> None:
    """Record a dict where Django keeps connection pools, by alias."""
    _pool_dicts[id(pools)] = pools


def track_pool(pool: Any) -> None:
    """Record that this process opened `pool`."""
    key = id(pool)
    if key not in _pool_pids:
        weakref.finalize(pool, _pool_pids.pop, key, None).atexit = False
        _pool_pids[key] = os.getpid()


def untrack(raw: Any) -> None:
    """Forget a raw connection its own process has closed."""
    _open_connections.pop(id(raw), None)


def invalidate_if_forked(send_post_fork: bool = True) -> Invalidation | None:
    """Invalidate inherited connections if this process forked unnoticed."""
    if PROCESS_MARK[0]:
        return None
    lock = _invalidation_locks.setdefault(os.getpid(), threading.Lock())
    with lock:  # Other threads wait until it is done.
        if PROCESS_MARK[0]:
            return None
        return invalidate_inherited(send_post_fork)


def invalidate_inherited(send_post_fork: bool = True) -> Invalidation:
    """
    In a new process: silence every recorded connection opened by another
    process and every inherited pool, reset the DatabaseWrappers that held
    them so they reconnect lazily, then send post_fork.
    """
    global _known_pid
    pid = os.getpid()
    parent_pid = _known_pid
    inherited = [entry for entry in list(_open_connections.values()) if entry.pid != pid]
    pools = [
        (pools_dict, alias, pool)
        for pools_dict in list(_pool_dicts.values())
        for alias, pool in list(pools_dict.items())
        if _pool_pids.get(id(pool)) != pid
    ]
    aliases: list[str] = []
    if inherited or pools:
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
        except OSError:  # Out of descriptors: the connections are kept, unused, instead.
            logger.exception("django-forksafe could not open %s", os.devnull)
            devnull = -1
        try:
            for entry in inherited:
                del _open_connections[id(entry.raw)]
                wrapper = entry.wrapper_ref()
                try:
                    with _logged("could not silence an inherited connection"):
                        _silence(entry.raw, devnull)
                finally:
                    # Forgotten even if silencing failed: never the parent's session again.
                    if wrapper is not None and wrapper.connection is entry.raw:
                        wrapper._forksafe_forget_connection()
                        if wrapper.alias not in aliases:
                            aliases.append(wrapper.alias)
            for pools_dict, alias, pool in pools:
                with _logged("could not drop an inherited connection pool"):
                    _forget_pool(pools_dict, alias, pool, devnull)
        finally:
            if devnull >= 0:
                os.close(devnull)
    with _logged("could not silence the inherited sockets to the database servers"):
        sockets.silence_inherited()  # Those Django did not open: pools, raw connections.
    with _logged("could not drop an inherited third-party connection pool"):
        forget_inherited_pools()
    # Before post_fork, so that its receivers can use the database.
    _known_pid = pid
    PROCESS_MARK[0] = 1
    for stale in [key for key in _invalidation_locks if key != pid]:
        _invalidation_locks.pop(stale, None)
    if parent_pid != pid and send_post_fork:
        # Another thread of the parent may have held the signal's lock at fork time.
        post_fork.lock = threading.Lock()
        for receiver, result in post_fork.send_robust(None, parent_pid=parent_pid, aliases=aliases):
            if isinstance(result, Exception):
                logger.error("post_fork receiver %r failed", receiver, exc_info=result)
    return Invalidation(parent_pid, aliases)


@contextlib.contextmanager
def _logged(failure: str) -> Iterator[None]:
    # One failure must not leave the other inherited connections live.
    try:
        yield
    except Exception:
        logger.exception("django-forksafe %s", failure)


def _forget_pool(pools: dict[str, Any], alias: str, pool: Any, devnull: int) -> None:
    # The pool's threads did not survive the fork and its idle connections
    # are the parent's sessions: never close() it or let its __del__ run.
    # Without it in Django's dict, the child lazily makes a pool of its own.
    if pools.get(alias) is pool:
        del pools[alias]
    for idle in list(getattr(pool, "_pool", ())):  # psycopg_pool's idle connections.
        _silence(idle, devnull)
    keep_forever(pool)


def _silence(raw: Any, devnull: int) -> None:
    try:
        fd = raw.fileno()
    except Exception:  # No such method (SQLite), or a broken connection.
        fd = -1
    if devnull < 0 or not isinstance(fd, int) or fd < 0:
        # Nothing to redirect (or nothing to redirect to): the driver must
        # never touch this handle again, not even from its deallocator at
        # interpreter exit. SQLite's rule for handles opened before fork() is
        # exactly that.
        keep_forever(raw)
        return
    # Redirect rather than os.close(): the descriptor number stays taken until
    # the driver's own close(), whose goodbye (COM_QUIT, Terminate, TLS
    # close_notify) and shutdown() now go nowhere.
    try:
        os.dup2(devnull, fd, inheritable=False)
    except BaseException:
        keep_forever(raw)  # Never freed, so it never says goodbye.
        raise
    with contextlib.suppress(Exception):
        raw.close()


def _invalidate_at_exit() -> None:
    # A child forked behind Python's back that never reached a checkout: its
    # finalisation would free the inherited connections (mysqlclient sends
    # COM_QUIT from its deallocator). Silence them first; no post_fork for a
    # process that is ending.
    invalidate_if_forked(send_post_fork=False)


os.register_at_fork(after_in_child=invalidate_inherited)
atexit.register(_invalidate_at_exit)
