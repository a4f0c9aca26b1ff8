"""
The endpoints of this process's database and cache servers: the table that
tells, in a child, which inherited sockets must be silenced (see silencing).

They are the peers of the connections Django opened here (one
``getpeername()`` per new raw connection, never per pooled checkout), and
those the settings name without a DNS lookup (IP addresses, ``localhost``,
Unix sockets). For a driver without ``fileno()``, the peer is read from its
socket object, or else the settings' host name is resolved once. With the C
extension (detection.NATIVE), each endpoint is also published to its table,
which fork() itself reads.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from django_forksafe.detection import NATIVE

logger = logging.getLogger("django_forksafe")

Endpoint = tuple[str, str | int]

DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432}

_endpoints: set[Endpoint] = set()
# Unix socket names whose directory the settings leave to the driver.
_unix_suffixes: set[str] = set()
# Whether the C extension's table holds every endpoint (it has a fixed size).
_native_complete = True
# Raw connections whose peer is known: a pool hands the same one out again.
_peers_known: weakref.WeakSet[Any] = weakref.WeakSet()
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
    from a pool): no system call for one already known. One whose peer
    cannot be read is logged, and looked at again when a pool hands it out
    next (a child silences it all the same: see silencing.one_by_one)."""
    try:
        if raw in _peers_known:
            return
    except TypeError:  # Not weakly referenceable: looked at every time.
        pass
    if not _record_peer(raw, vendor, settings_dict):
        return
    with contextlib.suppress(TypeError):
        _peers_known.add(raw)


def _record_peer(raw: Any, vendor: str, settings_dict: Mapping[str, Any] | None) -> bool:
    fd = fileno(raw)
    if fd is not None and NATIVE is not None and NATIVE.is_database_socket(fd):
        return True  # A new connection to a recorded server: one getpeername() in C.
    sock = _socket_of(raw)
    if sock is None and fd is None:  # No descriptor, no socket object: the host names, resolved once.
        if settings_dict is not None and vendor in DEFAULT_PORTS:
            _resolve_hosts(vendor, settings_dict)
        return True
    failure: OSError | None = None
    try:
        endpoint = peer_of(sock) if sock is not None else _peer_of_descriptor(fd) if fd is not None else None
    except OSError as error:
        endpoint, failure = None, error
    if endpoint is None:
        logger.warning(
            "django-forksafe could not read the server address of a new %s connection (%s): sockets "
            "to it that Django did not open may stay live in child processes forked before it is read",
            vendor or "server",
            failure or "not connected",
        )
        return False
    _add(endpoint)
    return True


def _peer_of_descriptor(fd: int) -> Endpoint | None:
    """The peer of the socket at `fd`, through a socket object over that very
    descriptor: no new one (os.dup() failed with EMFILE where the connection
    took the last free descriptor)."""
    # Under socket.setdefaulttimeout(), a socket object makes its descriptor
    # non-blocking: the driver's own must stay as it was.
    blocking = os.get_blocking(fd) if socket.getdefaulttimeout() is not None else None
    sock = socket.socket(fileno=fd)
    try:
        return peer_of(sock)
    finally:
        sock.detach()
        if blocking is not None:
            os.set_blocking(fd, blocking)


def _socket_of(raw: Any) -> socket.socket | None:
    # Drivers in pure Python: PyMySQL's _sock, mysql-connector's _socket.sock.
    for holder in (raw, getattr(raw, "_socket", None)):
        for name in ("_sock", "sock"):
            candidate = getattr(holder, name, None)
            if isinstance(candidate, socket.socket):
                return candidate
    return None


def fileno(raw: Any) -> int | None:
    """The descriptor of a raw connection, or None."""
    try:
        fd = raw.fileno()
    except Exception:  # No such method (SQLite, mysql-connector's C extension), or broken.
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def descriptor(raw: Any) -> int | None:
    """The descriptor a raw connection talks through: its fileno(), or its
    socket object's (PyMySQL, mysql-connector in pure Python); else None."""
    fd = fileno(raw)
    if fd is None and (sock := _socket_of(raw)) is not None:
        with contextlib.suppress(OSError):
            fd = sock.fileno()
    return fd if fd is not None and fd >= 0 else None


def _resolve_hosts(vendor: str, settings_dict: Mapping[str, Any]) -> None:
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


def remember_server(host: str, port: int) -> None:
    """Record a server endpoint named outside DATABASES (a cache's LOCATION):
    a Unix socket path, an IP address or localhost, without a DNS lookup; a
    host name resolved once (per process, host and port), so that the
    endpoint is known before the first connection, and a fork right after it."""
    if host.startswith("/"):
        _add(("unix", host))
    elif host in ("", "localhost"):
        for address in ("127.0.0.1", "::1"):
            _add_ip(address, port)
    else:
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            _resolve(host, port)
        else:
            _add_ip(host, port)


def peer_of(sock: socket.socket) -> Endpoint | None:
    """The endpoint `sock` is connected to, or None."""
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


def is_server(endpoint: Endpoint) -> bool:
    """Whether `endpoint` is one of the recorded servers'."""
    if endpoint in _endpoints:
        return True
    return endpoint[0] == "unix" and any(str(endpoint[1]).endswith(suffix) for suffix in _unix_suffixes)


def names(endpoint: Endpoint, host: str, port: int) -> bool:
    """Whether a connected peer is the server `host`, `port` names, given as
    (host, port) or (socket path, 0): a host name by its port alone, as it
    is not resolved again (in a child)."""
    if port == 0:
        return endpoint == ("unix", host)
    if endpoint[0] == "unix" or endpoint[1] != port:
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:  # A host name, localhost included.
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return endpoint[0] == str(address)


def any_known() -> bool:
    """Whether any server endpoint is recorded at all."""
    return bool(_endpoints or _unix_suffixes)


def native_table_complete() -> bool:
    """Whether the C extension's table holds every recorded endpoint."""
    return NATIVE is not None and _native_complete
