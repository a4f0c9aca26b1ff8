"""
Inherited sockets to the database servers, silenced whoever holds them.

Django's own connections are silenced one by one (see registry). A child
also inherits sockets that Django never saw: a third-party pool's idle
connections, a driver without ``fileno()`` (PyMySQL, mysql-connector), a raw
driver connection opened outside Django. In a child, every socket whose peer
is a database endpoint of this process gets, in place of its descriptor, a
dead end: a Unix stream socket never connected. A write there fails with
ENOTCONN and raises no SIGPIPE (a closed socket pair's EPIPE would kill a
process that set SIGPIPE to SIG_DFL); a read fails and poll() says POLLHUP
at once. Every driver and pool sees an ordinary lost connection and discards
it, and nothing reaches the server. The socket itself is released in the
child, so the server notices promptly when the parent goes.

With the C extension (detection.NATIVE) this happens inside fork() itself,
before any code of the child runs; without it, the at-fork handler (or, for
a fork behind Python's back, the first checkout) scans ``/proc/self/fd``.

The endpoints are the peers of the connections Django opened here (one
``getpeername()`` and one ``fstat()`` per new raw connection, never per
pooled checkout), and
those the settings name without a DNS lookup (IP addresses, ``localhost``,
Unix sockets). For a driver without ``fileno()``, the peer is read from its
socket object, or else the settings' host name is resolved once.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import resource
import socket
import stat
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from django_forksafe.detection import NATIVE

Endpoint = tuple[str, str | int]

DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432}

_endpoints: set[Endpoint] = set()
# Unix socket names whose directory the settings leave to the driver.
_unix_suffixes: set[str] = set()
# Whether the C extension's table holds every endpoint (it has a fixed size).
_native_complete = True
# Raw connections whose peer is known: a pool hands the same one out again.
_peers_known: weakref.WeakSet[Any] = weakref.WeakSet()
# The socket (device, inode) each raw connection's descriptor held when it
# was opened: a child may close what it inherited and reuse the number.
_socket_ids: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()
# Host names resolved for drivers without fileno() (once per host and port).
_resolved: set[tuple[str, int]] = set()


def _add(endpoint: Endpoint, suffix: bool = False) -> None:
    global _native_complete
    kind, where = endpoint
    if suffix:
        _unix_suffixes.add(str(where))
    elif endpoint in _endpoints:
        return
    else:
        _endpoints.add(endpoint)
    if NATIVE is None:
        return
    if kind == "unix":
        try:
            added = NATIVE.add_endpoint(socket.AF_UNIX, os.fsencode(str(where)), suffix=suffix)
        except ValueError:  # Longer than a socket address holds: nothing can connect there.
            return
    else:
        address = ipaddress.ip_address(kind)
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        added = NATIVE.add_endpoint(family, address.packed, int(where))
    if not added:  # The C table is full: Python scans too, at the fork.
        _native_complete = False
        NATIVE.want_python_at_fork()


def remember_peer(raw: Any, vendor: str = "", settings_dict: Mapping[str, Any] | None = None) -> None:
    """Record the peer of a raw connection Django has just opened (or taken
    from a pool): no system call for one already known."""
    try:
        if raw in _peers_known:
            return
        _peers_known.add(raw)
    except TypeError:  # Not weakly referenceable: looked at every time.
        pass
    fd = _fileno(raw)
    if fd is not None:
        with contextlib.suppress(OSError, TypeError):  # TypeError: not weakly referenceable.
            status = os.fstat(fd)
            _socket_ids[raw] = (status.st_dev, status.st_ino)
    if fd is not None and NATIVE is not None and NATIVE.is_database_socket(fd):
        return  # A new connection to a recorded server: one getpeername() in C.
    sock = _socket_of(raw)
    if sock is not None:
        with contextlib.suppress(OSError):
            endpoint = _endpoint(sock)
            if endpoint is not None:
                _add(endpoint)
        return
    if fd is not None:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as dup:
            endpoint = _endpoint(dup)
            if endpoint is not None:
                _add(endpoint)
    elif settings_dict is not None and vendor in DEFAULT_PORTS:
        _resolve_hosts(vendor, settings_dict)


def _socket_of(raw: Any) -> socket.socket | None:
    # Drivers in pure Python: PyMySQL's _sock, mysql-connector's _socket.sock.
    for holder in (raw, getattr(raw, "_socket", None)):
        for name in ("_sock", "sock"):
            candidate = getattr(holder, name, None)
            if isinstance(candidate, socket.socket):
                return candidate
    return None


def _fileno(raw: Any) -> int | None:
    try:
        fd = raw.fileno()
    except Exception:  # No such method (SQLite, mysql-connector's C extension), or broken.
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _resolve_hosts(vendor: str, settings_dict: Mapping[str, Any]) -> None:
    # No descriptor and no socket object: the host names, resolved once.
    for host, port in _hosts_and_ports(vendor, settings_dict):
        if host and not host.startswith("/"):
            _resolve(host, port)


def _resolve(host: str, port: int) -> None:
    if (host, port) in _resolved:
        return
    _resolved.add((host, port))
    with contextlib.suppress(OSError, UnicodeError):
        for *_, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            _add_ip(str(address[0]), port)


def _hosts_and_ports(vendor: str, settings_dict: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    """Each host the settings name with its port. libpq takes lists:
    HOST="db1,db2" with PORT="5432" or "5432,5433"."""
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    hosts = host.split(",") if vendor == "postgresql" else [host]
    ports = port.split(",") if vendor == "postgresql" else [port]
    if len(ports) == 1:
        ports = ports * len(hosts)
    for one_host, one_port in zip(hosts, ports, strict=False):
        try:
            number = int(one_port.strip() or DEFAULT_PORTS[vendor])
        except ValueError:  # The driver will say what is wrong with it.
            continue
        yield one_host.strip(), number


def _add_ip(address: str, port: int) -> None:
    with contextlib.suppress(ValueError):
        parsed = ipaddress.ip_address(address.partition("%")[0])
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped:
            parsed = parsed.ipv4_mapped
        _add((str(parsed), port))


def remember_settings(vendor: str, settings_dict: Mapping[str, Any]) -> None:
    """Record the endpoints an alias's settings name without a DNS lookup."""
    if vendor not in DEFAULT_PORTS:
        return
    options = settings_dict.get("OPTIONS") or {}
    for host, port in _hosts_and_ports(vendor, settings_dict):
        if vendor == "postgresql" and (not host or host.startswith("/")):
            name = f".s.PGSQL.{port}"
            if host:
                _add(("unix", os.path.join(host, name)))
            else:
                _add(("unix", "/" + name), suffix=True)
            continue
        if vendor == "mysql" and host.startswith("/"):  # Django passes it as unix_socket.
            _add(("unix", host))
            continue
        if vendor == "mysql" and host in ("", "localhost"):
            unix_socket = options.get("unix_socket") if isinstance(options, Mapping) else None
            if unix_socket:
                _add(("unix", str(unix_socket)))
            else:
                _add(("unix", "/mysqld.sock"), suffix=True)
        for address in ("127.0.0.1", "::1") if host in ("", "localhost") else (host,):
            _add_ip(address, port)


def remember_server(host: str, port: int, resolve: bool = False) -> bool:
    """Record a server endpoint named outside DATABASES (a cache's LOCATION):
    a Unix socket path, an IP address or localhost, without a DNS lookup. A
    host name is resolved (once) with `resolve`, for a client whose sockets
    cannot be looked at; else False: record its connected peer instead."""
    if host.startswith("/"):
        _add(("unix", host))
        return True
    if host in ("", "localhost"):
        for address in ("127.0.0.1", "::1"):
            _add_ip(address, port)
        return True
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        if resolve:
            _resolve(host, port)
        return resolve
    _add_ip(host, port)
    return True


def _endpoint(sock: socket.socket) -> Endpoint | None:
    try:
        peer = sock.getpeername()
    except OSError:  # Not connected.
        return None
    if sock.family == socket.AF_UNIX:
        # Abstract names come as bytes, and need not be UTF-8.
        return ("unix", os.fsdecode(peer)) if peer else None
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        address = ipaddress.ip_address(peer[0].partition("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return (str(address), int(peer[1]))
    return None


def _is_database(endpoint: Endpoint) -> bool:
    if endpoint in _endpoints:
        return True
    return endpoint[0] == "unix" and any(str(endpoint[1]).endswith(suffix) for suffix in _unix_suffixes)


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


def still_holds(fd: int, raw: Any) -> bool:
    """Whether descriptor `fd` still holds the socket `raw` was opened with
    (True where that is not known)."""
    try:
        expected = _socket_ids.get(raw)
    except TypeError:  # Not weakly referenceable.
        return True
    if expected is None:
        return True
    try:
        status = os.fstat(fd)
    except OSError:  # Closed.
        return False
    return (status.st_dev, status.st_ino) == expected


def silenced_inside_fork() -> bool:
    """Whether the C extension silenced every inherited database socket of
    this process inside fork() (nothing is left for silence_inherited())."""
    if NATIVE is None or not _native_complete:
        return False
    _, complete = NATIVE.last_fork()
    return bool(complete)


class headroom:  # Lower case: used as a function, as contextlib.suppress is.
    """``with headroom()``: room for a few descriptors more than RLIMIT_NOFILE
    allows, for a child forked with none left, which needs a few to silence
    what it inherited (/dev/null, /proc/self/fd, a socket pair). The limit is
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
    if not (_endpoints or _unix_suffixes) or silenced_inside_fork():
        return 0
    with headroom():
        return _silence_database_sockets()


def _silence_database_sockets() -> int:
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except (FileNotFoundError, NotADirectoryError):  # No /proc (not Linux): Django's own connections only.
        return 0
    dead_end = None
    silenced = 0
    try:
        for fd in descriptors:
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    continue
                with socket.socket(fileno=os.dup(fd)) as sock:
                    endpoint = _endpoint(sock)
                if endpoint is None or not _is_database(endpoint):
                    continue
                if dead_end is None:
                    dead_end = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
