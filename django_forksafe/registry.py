"""
The process-wide record of open raw connections, and the invalidation of
inherited ones in a child: it resets their wrappers, has silencing silence
them, calls the hooks that drop inherited pools and cache clients, and sends
post_fork. Nothing of it sends a byte to the server.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from django_forksafe import silencing
from django_forksafe.detection import NATIVE, PROCESS_MARK
from django_forksafe.signals import post_fork
from django_forksafe.silencing import keep_forever  # Also imported from here (documented so before).

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
    forget = forget_when_collected(_open_connections, id(raw))
    database = str(wrapper.settings_dict.get("NAME") or "") if wrapper.vendor == "sqlite" else None
    if database is not None and NATIVE is not None:
        NATIVE.want_python_at_fork()
    _open_connections[id(raw)] = _OpenConnection(raw, _known_pid, weakref.ref(wrapper, forget), database)


class _Entry(Protocol):
    @property
    def pid(self) -> int: ...


EntryType = TypeVar("EntryType", bound=_Entry)


def forget_when_collected(record: dict[int, EntryType], key: int) -> Callable[[weakref.ref[Any]], None]:
    """A weakref callback for the object holding `record[key]`: when it is
    collected without closing what it held, in the process that opened it,
    forget the entry, so that the driver closes it as plain Django would. In a
    child, the entry is left for invalidation to silence first."""

    def forget(_ref: weakref.ref[Any]) -> None:
        entry = record.get(key)
        if entry is not None and entry.pid == _known_pid and PROCESS_MARK[0]:
            del record[key]

    return forget


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
            silencing.silence_inherited()  # Those no one told us of: raw connections, other pools.
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
        # With no receiver, send_robust() returns at once: not calling it
        # spares a fresh child the copy of the pages its code sits on.
        if post_fork.receivers:
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
        with silencing.one_by_one() as silence:
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
