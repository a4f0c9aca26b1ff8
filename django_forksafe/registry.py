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
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from django_forksafe import sockets, sqlite
from django_forksafe.detection import NATIVE, PROCESS_MARK
from django_forksafe.signals import post_fork

if TYPE_CHECKING:
    from django_forksafe.wrapper import ForkSafeMixin

logger = logging.getLogger("django_forksafe")


# Slotted, not frozen: a frozen dataclass's __init__ goes through
# object.__setattr__, in every child's first use.
@dataclass(slots=True)
class Invalidation:
    """What invalidate_inherited() did in this process."""

    parent_pid: int
    aliases: list[str]


@dataclass(slots=True)
class _OpenConnection:
    raw: Any
    pid: int
    wrapper_ref: weakref.ref[ForkSafeMixin]
    database: str | None  # SQLite's file.


# Strong references on purpose. In a child, CPython clears the other threads'
# state (and with it their thread-local DatabaseWrappers) before at-fork
# handlers run; holding the raw connections here keeps a driver's deallocator
# (mysqlclient sends COM_QUIT) from running before the socket is redirected.
_open_connections: dict[int, _OpenConnection] = {}

# Serialise invalidation between the threads of one process, when a fork is
# noticed after the fact. One lock per process: a lock that another thread
# held when the process forked stays held in the child for ever. Re-entrant:
# a signal handler may close connections while invalidation runs.
_invalidation_locks: dict[int, threading.RLock] = {}

# What invalidation took over from the parent's record, never freed: freeing
# it would write to pages shared with the parent, a copy-on-write fault (a few
# µs) for each.
_taken_from_parent: list[Any] = []

# Called with the child's pid on invalidation, to drop what else it inherited:
# connection pools (django_forksafe.pools), memcached clients (.cache).
_invalidation_hooks: list[Callable[[int], None]] = []

# The process that last invalidated inherited connections (or imported us):
# the parent_pid of post_fork, and the pid recorded with each connection.
_known_pid = os.getpid()
# The process whose inherited sockets were last scanned for.
_scanned_pid = _known_pid


def track(wrapper: ForkSafeMixin, raw: Any) -> None:
    """Record a raw connection that `wrapper` has just opened (no system call)."""
    if not PROCESS_MARK[0]:  # Reached without a checkout (a backend of its own).
        invalidate_if_forked()
    key = id(raw)
    pid = _known_pid

    def forget(_ref: weakref.ref[ForkSafeMixin]) -> None:
        # The wrapper was collected without close(). In the opening process,
        # let the driver close the connection as plain Django would; in a
        # child, leave it for invalidate_inherited() to silence first.
        entry = _open_connections.get(key)
        if entry is not None and entry.pid == _known_pid and PROCESS_MARK[0]:
            del _open_connections[key]

    database = str(wrapper.settings_dict.get("NAME") or "") if wrapper.vendor == "sqlite" else None
    if database is not None and NATIVE is not None:
        NATIVE.want_python_at_fork()
    _open_connections[key] = _OpenConnection(raw, pid, weakref.ref(wrapper, forget), database)


def keep_forever(obj: Any) -> None:
    """Never free `obj`, so that no deallocator of it runs in this process."""
    if NATIVE is not None:
        NATIVE.keep_forever(obj)  # ctypes' first call costs a child 50 page faults.
        return
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def known_pid() -> int:
    """The process that opened what is recorded now: this one, once it has invalidated."""
    return _known_pid


def on_invalidation(hook: Callable[[int], None]) -> None:
    """Have invalidate_inherited() call `hook(pid)` in every child, before post_fork."""
    if hook not in _invalidation_hooks:
        _invalidation_hooks.append(hook)


def untrack(raw: Any) -> None:
    """Forget a raw connection its own process has closed."""
    _open_connections.pop(id(raw), None)


def invalidate_if_forked(send_post_fork: bool = True) -> Invalidation | None:
    """Invalidate inherited connections if this process has not yet."""
    if PROCESS_MARK[0]:
        return None
    lock = _invalidation_locks.setdefault(os.getpid(), threading.RLock())
    with lock:  # Other threads wait until it is done.
        if PROCESS_MARK[0]:
            return None
        return invalidate_inherited(send_post_fork)


def invalidate_inherited(send_post_fork: bool = True) -> Invalidation:
    """
    In a new process: silence every recorded connection opened by another
    process and reset the DatabaseWrappers that held them, so that they
    reconnect lazily; drop inherited pools and clients (the hooks); silence
    the other inherited database sockets; then send post_fork. Each step may be
    interrupted by a signal handler that closes connections, which then runs
    the rest: whatever is taken is taken once.
    """
    global _known_pid, _scanned_pid
    pid = os.getpid()
    # The process that last invalidated (or imported us) is the parent, unless
    # the parent forked before its own first use: the fork handler saw which.
    parent_pid = (NATIVE.forked_from() if NATIVE is not None else 0) or _known_pid
    aliases = _forget_connections(pid)
    for hook in list(_invalidation_hooks):  # Pools, caches.
        with logged("could not drop an inherited pool or client"):
            hook(pid)
    if _scanned_pid != pid:
        # After the pools' hook: the idle connections it silences still hold
        # their own sockets, which it can then close.
        with logged("could not silence the inherited sockets to the database servers"):
            sockets.silence_inherited()  # Those no one told us of: raw connections, other pools.
        # Only once it has run: a signal handler's exception in it (SystemExit,
        # KeyboardInterrupt) leaves it to the next invalidation, at exit at the latest.
        _scanned_pid = pid
    if _known_pid == pid:  # Done meanwhile, post_fork included (by a signal handler).
        return Invalidation(parent_pid, aliases)
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


def _forget_connections(pid: int) -> list[str]:
    """Silence the connections Django opened in other processes, and reset
    their wrappers. Returns the aliases."""
    aliases: list[str] = []
    inherited = [entry for entry in list(_open_connections.values()) if entry.pid != pid]
    if not inherited:
        return aliases
    unsilenced: Any = None
    try:
        with silencing() as silence:
            for entry in inherited:
                # Kept for ever below if an exception interrupts before it is silenced.
                unsilenced = raw = entry.raw
                # The wrapper first: from then on Django cannot reach the raw
                # connection, not even from a signal handler that closes it.
                wrapper = entry.wrapper_ref()
                if wrapper is not None and wrapper.connection is raw:
                    wrapper._forksafe_forget_connection()
                    if wrapper.alias not in aliases:
                        aliases.append(wrapper.alias)
                if _open_connections.pop(id(raw), None) is not None:
                    with logged("could not silence an inherited connection"):
                        silence(raw, entry.database)
                unsilenced = None  # Silenced, or taken meanwhile (by a signal handler).
    except BaseException:
        # A signal handler's SystemExit or KeyboardInterrupt between two
        # lines: a connection taken from the record but not yet silenced is
        # never freed, so that its driver never says goodbye (not even at
        # interpreter exit, when nothing would invalidate it any more).
        if unsilenced is not None:
            keep_forever(unsilenced)
        raise
    _taken_from_parent.append(inherited)
    return aliases


class silencing:  # Lower case: used as a function, as contextlib.suppress is.
    """``with silencing() as silence``: silence(raw, database=None) for
    inherited raw connections, with /dev/null open meanwhile (once, for them
    all) unless fork() itself silenced their sockets. A class rather than a
    generator, as logged is: both run in every child's first use."""

    __slots__ = ("_devnull", "_inside_fork")

    def __enter__(self) -> Callable[..., None]:
        self._inside_fork = sockets.silenced_inside_fork()
        self._devnull = -1 if self._inside_fork else _devnull()
        return self._silence_one

    def _silence_one(self, raw: Any, database: str | None = None) -> None:
        _silence(raw, self._devnull, database, self._inside_fork)

    def __exit__(self, *exc_info: object) -> None:
        if self._devnull >= 0:
            os.close(self._devnull)


def _devnull() -> int:
    try:
        with sockets.headroom():
            return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # Out of descriptors all the same: the connections are kept, unused, instead.
        logger.exception("django-forksafe could not open %s", os.devnull)
        return -1


class logged:  # Lower case: used as a function, as contextlib.suppress is.
    """``with logged(failure)``: an exception is logged, and the work goes on:
    one failure must not leave the other inherited connections live."""

    __slots__ = ("_failure",)

    def __init__(self, failure: str) -> None:
        self._failure = failure

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        if kind is None or error is None or not isinstance(error, Exception):
            return False
        logger.error("django-forksafe %s", self._failure, exc_info=(kind, error, traceback))
        return True


def _silence(raw: Any, devnull: int, database: str | None = None, inside_fork: bool = False) -> None:
    if database is None and inside_fork:
        # fork() itself put a dead end over every inherited database socket.
        # By now (the child's first use) the descriptor may have been closed
        # and its number reused (Celery's workers close what they inherited):
        # never touch it, nor let the driver close it.
        keep_forever(raw)
        return
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
        if sqlite.is_sqlite(raw):
            sqlite.retire_inherited(raw, database)
        return
    if not sockets.still_holds(fd, raw):
        # The child closed the inherited descriptor, and the number may hold
        # something of its own by now (Celery's workers close what they
        # inherited): never touch it, nor let the driver close it.
        keep_forever(raw)
        return
    # psycopg_pool's close_returns=True: close() would give the connection
    # back to the inherited pool (whose lock another thread may have held).
    if getattr(raw, "_pool", None) is not None:
        with contextlib.suppress(Exception):
            raw._pool = None
    # Redirect rather than os.close(): the descriptor number stays taken until
    # the driver's own close(), whose goodbye (COM_QUIT, Terminate, TLS
    # close_notify) and shutdown() now go nowhere.
    try:
        put = sockets.put_over(devnull, fd)
    except BaseException:
        keep_forever(raw)  # Never freed, so it never says goodbye.
        raise
    if not put:  # Closed instead: the driver must not close that number again.
        keep_forever(raw)
        return
    with contextlib.suppress(Exception):
        raw.close()


def _invalidate_at_exit() -> None:
    # A child forked behind Python's back that never reached a checkout: its
    # finalisation would free the inherited connections (mysqlclient sends
    # COM_QUIT from its deallocator). Silence them first; no post_fork for a
    # process that is ending.
    invalidate_if_forked(send_post_fork=False)


def _invalidate_after_fork() -> None:
    # Once per process: an at-fork hook registered before ours that used the
    # database has invalidated already, and opened the child's own session.
    invalidate_if_forked()


if NATIVE is not None:
    # fork() itself left every inherited socket dead, and Django's state is
    # checked wherever it is read: the rest waits for the child's first use,
    # so that a child that never uses the database (a fork and exit, a fork
    # and exec) pays nothing more, not even a page fault. The C hook calls
    # ours at the fork only if its scan failed, or if a child must hear of
    # the fork at once: post_fork has receivers (it is documented as sent at
    # the fork), or a SQLite handle is open (no socket to kill: its finaliser
    # could delete the parent's journal), or the endpoint table is full.
    NATIVE.set_python_handler(_invalidate_after_fork)
    os.register_at_fork(after_in_child=NATIVE.after_fork_in_child)
else:
    os.register_at_fork(after_in_child=_invalidate_after_fork)
atexit.register(_invalidate_at_exit)
