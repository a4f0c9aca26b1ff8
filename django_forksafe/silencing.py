"""
Silencing what a child inherited, without a byte to the server: a socket
shared with the parent gets a dead end in place of its descriptor before
anything of the child's can reach it, and a handle without a socket
(SQLite's files) is never touched again.

A dead end is one end of a Unix SOCK_SEQPACKET socket pair whose other end is
closed: a write fails with EPIPE and raises no SIGPIPE (a stream socket's
would, killing a child that set it to SIG_DFL), an error every driver and
OpenSSL take as fatal (an unconnected socket's ENOTCONN is one OpenSSL
retries, for ever); a read, blocking or not, gets end of file, and poll()
says POLLHUP at once. Every driver and pool sees an ordinary lost
connection and discards it, and the socket itself is released in the child,
so the server notices promptly when the parent goes.
Django's own connections are silenced one by one (registry's invalidation);
every other socket to a recorded server endpoint (see endpoints) is found in
``/proc/self/fd``: a third-party pool's idle connections, a driver without
``fileno()``, a raw driver connection opened outside Django. With the C
extension (detection.NATIVE) the scan happens inside fork() itself, before
any code of the child runs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import resource
import socket
import stat
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from django_forksafe import endpoints, sqlite
from django_forksafe.detection import NATIVE

logger = logging.getLogger("django_forksafe")

# The socket (device, inode) each raw connection's descriptor held when it
# was opened: a child may close what it inherited and reuse the number.
_socket_ids: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()


def keep_forever(obj: Any) -> None:
    """Never free `obj`, so that no deallocator of it runs in this process."""
    if NATIVE is not None:
        NATIVE.keep_forever(obj)  # ctypes' first call costs a child 50 page faults.
        return
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def remember_socket(raw: Any) -> None:
    """Record which socket a raw connection Django has just opened (or taken
    from a pool) holds: one fstat() for a new one, no system call after."""
    try:
        if raw in _socket_ids:
            return
    except TypeError:  # Not weakly referenceable: its identity is not known.
        return
    fd = endpoints.descriptor(raw)
    if fd is not None:
        with contextlib.suppress(OSError):
            status = os.fstat(fd)
            _socket_ids[raw] = (status.st_dev, status.st_ino)


def holds_own_socket(raw: Any) -> bool:
    """Whether the raw connection's descriptor holds, now, the very socket it
    was opened with (False where that is not known)."""
    fd = endpoints.descriptor(raw)
    return fd is not None and _holds(fd, raw, unknown=False)


def still_holds(fd: int, raw: Any) -> bool:
    """Whether descriptor `fd` still holds the socket `raw` was opened with
    (True where that is not known)."""
    return _holds(fd, raw, unknown=True)


def _holds(fd: int, raw: Any, unknown: bool) -> bool:
    try:
        expected = _socket_ids.get(raw)
    except TypeError:  # Not weakly referenceable.
        return unknown
    if expected is None:
        return unknown
    try:
        status = os.fstat(fd)
    except OSError:  # Closed.
        return False
    return (status.st_dev, status.st_ino) == expected


def put_over(source: int, fd: int, inheritable: bool = False) -> bool:
    """Put a copy of `source` over `fd`, so that the socket there is
    released in this process without a byte sent: True. At or above
    RLIMIT_NOFILE (lowered since `fd` was opened) nothing can be put there:
    the child's copy is closed instead, which sends nothing while the parent
    holds its own: False."""
    try:
        os.dup2(source, fd, inheritable=inheritable)
    except OSError as error:
        if error.errno != errno.EBADF or source < 0:
            raise
        try:
            os.close(fd)
        except OSError as closing:
            if closing.errno != errno.EBADF:
                raise
            # Closed already: the child let it go itself (Celery's workers
            # close what they inherited).
        return False
    return True


def silenced_inside_fork() -> bool:
    """Whether the C extension silenced every inherited database socket of
    this process inside fork() (nothing is left for silence_inherited())."""
    if NATIVE is None or not endpoints.native_table_complete():
        return False
    _, complete = NATIVE.last_fork()
    return bool(complete)


class headroom:  # Lower case: used as a function, as contextlib.suppress is.
    """``with headroom()``: room for a few descriptors more than RLIMIT_NOFILE
    allows, for a child forked with none left, which needs a few to silence
    what it inherited (/dev/null, /proc/self/fd, a dead end). The limit is
    put back after; what was opened meanwhile stays open above it."""

    __slots__ = ("_limits",)

    def __enter__(self) -> None:
        self._limits: tuple[int, int] | None = None
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft + 8 <= hard):
            with contextlib.suppress(OSError, ValueError):  # Refused: without, then.
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft + 8, hard))
                self._limits = (soft, hard)

    def __exit__(self, *exc_info: object) -> None:
        if self._limits is not None:
            with contextlib.suppress(OSError, ValueError):  # The hard limit lowered meanwhile.
                resource.setrlimit(resource.RLIMIT_NOFILE, self._limits)


def silence_inherited() -> int:
    """In a child: silence every socket to a database endpoint, unless the C
    extension already did inside fork(). Returns how many."""
    if not endpoints.any_known() or silenced_inside_fork():
        return 0
    with headroom():
        return _silence_database_sockets()


def _silence_database_sockets() -> int:
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except (FileNotFoundError, NotADirectoryError):  # No /proc (not Linux): Django's own connections only.
        return 0
    return _put_dead_ends([(fd, endpoints.is_server) for fd in descriptors])


def silence_connected(held: list[tuple[socket.socket, str, int]]) -> int:
    """In a child: put a dead end over the descriptor of each inherited
    socket object (a cache client's) that is still connected to its server,
    given as (host, port) or (socket path, 0), whatever the endpoints
    recorded. A descriptor fork() silenced already, or that the child closed
    and reused for a peer of another port, is left alone. Returns how many."""
    targets = []
    for sock, host, port in held:
        with contextlib.suppress(OSError):
            fd = sock.fileno()
            if fd >= 0:
                targets.append((fd, functools.partial(endpoints.names, host=host, port=port)))
    if not targets:
        return 0
    with headroom():
        return _put_dead_ends(targets)


def _put_dead_ends(targets: Iterable[tuple[int, Callable[[endpoints.Endpoint], bool]]]) -> int:
    """Put a dead end over each socket descriptor whose peer the predicate
    beside it picks. Returns how many."""
    dead_end = None
    silenced = 0
    try:
        for fd, picked in targets:
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    continue
                with socket.socket(fileno=os.dup(fd)) as sock:
                    endpoint = endpoints.peer_of(sock)
                if endpoint is None or not picked(endpoint):
                    continue
                if dead_end is None:
                    dead_end, closed = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    closed.close()
                put_over(dead_end.fileno(), fd, inheritable=os.get_inheritable(fd))
                silenced += 1
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE):
                    raise  # Out of descriptors even with headroom(): the caller logs it.
                continue  # Closed meanwhile: on to the next.
            except Exception:  # An odd socket: on to the next.
                continue
    finally:
        if dead_end is not None:
            dead_end.close()
    return silenced


class one_by_one:  # Lower case: used as a function, as contextlib.suppress is.
    """``with one_by_one() as silence``: silence(raw, database=None) for
    inherited raw connections, with /dev/null open meanwhile (once, for them
    all). Where fork() itself silenced every socket to a recorded endpoint,
    only a connection whose descriptor still holds its own socket is left to
    silence: its server was not in the table at the fork (another thread
    forked before its peer was recorded); /dev/null is opened for the first
    such. A class rather than a generator: it runs in every child's first use."""

    __slots__ = ("_devnull", "_inside_fork")

    def __enter__(self) -> Callable[..., None]:
        self._inside_fork = silenced_inside_fork()
        self._devnull: int | None = None if self._inside_fork else _devnull()
        return self._silence_one

    def _silence_one(self, raw: Any, database: str | None = None) -> None:
        if self._inside_fork and database is None and not holds_own_socket(raw):
            # A dead end over it since fork(); or the child closed it, and
            # the number may hold something of its own by now (Celery's
            # workers close what they inherited): never touch it, nor let
            # the driver close it.
            keep_forever(raw)
            return
        if self._devnull is None:
            self._devnull = _devnull()
        _silence(raw, self._devnull, database)

    def __exit__(self, *exc_info: object) -> None:
        if self._devnull is not None and self._devnull >= 0:
            os.close(self._devnull)


def _devnull() -> int:
    try:
        with headroom():
            return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # Out of descriptors all the same: the connections are kept, unused, instead.
        logger.exception("django-forksafe could not open %s", os.devnull)
        return -1


def _silence(raw: Any, devnull: int, database: str | None = None) -> None:
    fd = endpoints.descriptor(raw)
    if devnull < 0 or fd is None:
        # Nothing to redirect (or nothing to redirect to): the driver must
        # never touch this handle again, not even from its deallocator at
        # interpreter exit. SQLite's rule for handles opened before fork() is
        # exactly that.
        keep_forever(raw)
        if sqlite.is_sqlite(raw):
            sqlite.retire_inherited(raw, database)
        return
    if not still_holds(fd, raw):
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
        put = put_over(devnull, fd)
    except BaseException:
        keep_forever(raw)  # Never freed, so it never says goodbye.
        raise
    if not put or endpoints.fileno(raw) is None:
        # Closed instead: the driver must not close that number again. Or
        # the descriptor is a socket object's (PyMySQL, mysql-connector in
        # pure Python), whose close() would send through socket calls on
        # /dev/null: never freed instead.
        keep_forever(raw)
        return
    with contextlib.suppress(Exception):
        raw.close()


