"""
Inherited sockets to the database servers, silenced whoever holds them.

Django's own connections are silenced one by one (see registry). A child
also inherits sockets that Django never saw: a third-party pool's idle
connections, a driver without ``fileno()`` (PyMySQL, mysql-connector), a raw
driver connection opened outside Django. In a child, every socket whose peer
is a database endpoint of this process gets, in place of its descriptor, one
end of a socket pair whose other end is closed: reads see end-of-file and
writes fail, so every driver and pool sees an ordinary "server closed the
connection" and discards it, and nothing reaches the server. The socket
itself is released in the child, so the server notices promptly when the
parent goes.

The endpoints are the peers of the connections Django opened here (one
``getpeername()`` per new connection), and those the settings name without
a DNS lookup (IP addresses, ``localhost``, Unix sockets).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
from collections.abc import Mapping
from typing import Any

Endpoint = tuple[str, str | int]

DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432}

_endpoints: set[Endpoint] = set()
# Unix socket names whose directory the settings leave to the driver.
_unix_suffixes: set[str] = set()


def remember_peer(raw: Any) -> None:
    """Record the peer of a raw connection Django has just opened."""
    try:
        fd = raw.fileno()
    except Exception:  # No fileno(): the settings' endpoints stand in for it.
        return
    if isinstance(fd, int) and fd >= 0:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            endpoint = _endpoint(sock)
            if endpoint is not None:
                _endpoints.add(endpoint)


def remember_settings(vendor: str, settings_dict: Mapping[str, Any]) -> None:
    """Record the endpoints an alias's settings name without a DNS lookup."""
    if vendor not in DEFAULT_PORTS:
        return
    host = str(settings_dict.get("HOST") or "")
    port = int(settings_dict.get("PORT") or DEFAULT_PORTS[vendor])
    options = settings_dict.get("OPTIONS") or {}
    if vendor == "postgresql" and (not host or host.startswith("/")):
        name = f".s.PGSQL.{port}"
        if host:
            _endpoints.add(("unix", os.path.join(host, name)))
        else:
            _unix_suffixes.add("/" + name)
        return
    if vendor == "mysql" and (not host or host == "localhost"):
        unix_socket = options.get("unix_socket") if isinstance(options, Mapping) else None
        if unix_socket:
            _endpoints.add(("unix", str(unix_socket)))
        else:
            _unix_suffixes.add("/mysqld.sock")
    addresses = {"127.0.0.1", "::1"} if host in ("", "localhost") else {host}
    for address in addresses:
        with contextlib.suppress(ValueError):
            _endpoints.add((str(ipaddress.ip_address(address)), port))


def _endpoint(sock: socket.socket) -> Endpoint | None:
    try:
        peer = sock.getpeername()
    except OSError:  # Not connected.
        return None
    if sock.family == socket.AF_UNIX:
        return ("unix", peer.decode() if isinstance(peer, bytes) else str(peer))
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        address = ipaddress.ip_address(peer[0].split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return (str(address), int(peer[1]))
    return None


def _is_database(endpoint: Endpoint) -> bool:
    if endpoint in _endpoints:
        return True
    return endpoint[0] == "unix" and any(str(endpoint[1]).endswith(suffix) for suffix in _unix_suffixes)


def silence_inherited() -> int:
    """In a child: silence every socket to a database endpoint. Returns how many."""
    if not (_endpoints or _unix_suffixes):
        return 0
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # No /proc (not Linux): Django's own connections only.
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
            except OSError:  # Closed meanwhile (the listing's own descriptor).
                continue
            if endpoint is None or not _is_database(endpoint):
                continue
            if dead_end is None:
                dead_end, closed = socket.socketpair()
                closed.close()
            os.dup2(dead_end.fileno(), fd, inheritable=os.get_inheritable(fd))
            silenced += 1
    finally:
        if dead_end is not None:
            dead_end.close()
    return silenced
