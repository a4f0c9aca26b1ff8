"""
The cache tests' servers and settings: our own memcached (started by
tests/machine/setup.sh on 127.0.0.1:11311 and a Unix socket under /tmp;
FORKSAFE_MEMCACHED ("host:port") or FORKSAFE_MEMCACHED_PORT, and
FORKSAFE_MEMCACHED_SOCKET to move them) and Redis (127.0.0.1, port
FORKSAFE_REDIS_PORT, default 6379, Celery's broker; database 12 here).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import Any

from tests import dbconfig
from tests.utils import skip_or_fail

MEMCACHED = os.environ.get("FORKSAFE_MEMCACHED") or f"127.0.0.1:{os.environ.get('FORKSAFE_MEMCACHED_PORT', '11311')}"
MEMCACHED_SOCKET = os.environ.get("FORKSAFE_MEMCACHED_SOCKET", "/tmp/forksafe-memcached.sock")
REDIS = dbconfig.redis_url(12)

# Per library: Django's BACKEND (the control) and ours.
BACKENDS = {
    "pylibmc": {
        "plain": "django.core.cache.backends.memcached.PyLibMCCache",
        "forksafe": "django_forksafe.cache.PyLibMCCache",
    },
    "pymemcache": {
        "plain": "django.core.cache.backends.memcached.PyMemcacheCache",
        "forksafe": "django_forksafe.cache.PyMemcacheCache",
    },
    # redis-py checks the pid at every checkout: Django's own is the one tested.
    "redis": {"plain": "django.core.cache.backends.redis.RedisCache"},
}
# Backends of one's own on each library (tests.caches.backends): a _cache
# that keeps its client in a threading.local with our mixin forced on it
# (forksafe_cache() refuses it), and a cached_property one through forksafe_cache().
for _name, _variants in [("PyLibMCCache", BACKENDS["pylibmc"]), ("PyMemcacheCache", BACKENDS["pymemcache"])]:
    _variants["threadlocal"] = f"tests.caches.backends.ThreadLocal{_name}"
    _variants["threadlocal_forced"] = f"tests.caches.backends.ForcedThreadLocal{_name}"
    _variants["own"] = f"tests.caches.backends.ForkSafeOwn{_name}"
MEMCACHED_LIBRARIES = ("pylibmc", "pymemcache")
# Bounded, so that a control that loses replies fails instead of hanging.
TIMEOUT_OPTIONS: dict[str, dict[str, Any]] = {
    "pylibmc": {"behaviors": {"connect_timeout": 2000, "receive_timeout": 2_000_000, "send_timeout": 2_000_000}},
    "pymemcache": {"connect_timeout": 2, "timeout": 2},
    "redis": {},
}


# A host name for 127.0.0.1 that is neither an IP address literal nor
# localhost (both recorded without DNS): the code's host-name path, as
# "memcached:11211" in a docker-compose file takes it.
HOST_NAME = "127.1"
# Two servers of the test's own (test_caches.py's fixture starts them):
# FORKSAFE_MEMCACHED_PAIR="PORT,PORT" on 127.0.0.1.
PAIR_ENV = "FORKSAFE_MEMCACHED_PAIR"


# A server nothing listens on (tcpmux), which pymemcache's HashClient holds
# for dead at its first failure with DOWN_OPTIONS.
DOWN = "127.0.0.1:1"
DOWN_OPTIONS: dict[str, Any] = {"ignore_exc": True, "retry_attempts": 0}


def pair_ports() -> list[int]:
    return [int(port) for port in os.environ[PAIR_ENV].split(",")]


def memcached_address(where: str = "tcp") -> tuple[str, int] | str:
    if where == "unix":
        return MEMCACHED_SOCKET
    if where in ("pair", "pair_and_down"):
        return "127.0.0.1", pair_ports()[0]
    host, _, port = MEMCACHED.rpartition(":")
    return host, int(port)


def location(library: str, where: str = "tcp") -> Any:
    """LOCATION for the library: "host:port" ("hostname": by a host name),
    the Unix socket ("unix:/path"), or "pair": both servers of the pair for
    pylibmc, the first for pymemcache (the test adds the other at run time)."""
    if library == "redis":
        return REDIS
    if where == "unix":
        return f"unix:{MEMCACHED_SOCKET}"
    if where == "hostname":
        return f"{HOST_NAME}:{MEMCACHED.rpartition(':')[2]}"
    if where == "pair":
        servers = [f"127.0.0.1:{port}" for port in pair_ports()]
        return servers if library == "pylibmc" else servers[0]
    if where == "pair_and_down":
        return [f"127.0.0.1:{pair_ports()[0]}", DOWN]
    return MEMCACHED


def cache_entry(library: str, variant: str, where: str = "tcp", **extra: Any) -> dict[str, Any]:
    options = {**TIMEOUT_OPTIONS[library], **(DOWN_OPTIONS if where == "pair_and_down" else {})}
    entry = {"BACKEND": BACKENDS[library][variant], "LOCATION": location(library, where), "OPTIONS": options}
    return {**entry, **extra}


def unreachable_reason(library: str, where: str = "tcp") -> str | None:
    """Why the library's server cannot be used, or None if it answers."""
    if library == "redis":
        address: Any = ("127.0.0.1", dbconfig.REDIS_PORT)
        family = socket.AF_INET
    else:
        address = memcached_address(where)
        family = socket.AF_UNIX if where == "unix" else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(address)
        return None
    except OSError as exc:
        return f"{library}'s server not reachable at {address} ({exc}); run tests/machine/setup.sh"


def held_ports(server_port: int) -> set[int]:
    """Local ports of this process's TCP sockets to `server_port`."""
    ports = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            duplicate = os.dup(int(name))
        except OSError:  # Closed meanwhile.
            continue
        try:
            sock = socket.socket(fileno=duplicate)
        except OSError:  # Not a socket any more.
            os.close(duplicate)
            continue
        with sock, contextlib.suppress(OSError):  # OSError: not connected.
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getpeername()[1] == server_port:
                ports.add(int(sock.getsockname()[1]))
    return ports


def require(library: str, where: str = "tcp") -> None:
    """Skip when the server or the client library is missing; fail in CI."""
    reason = unreachable_reason(library, where)
    if reason is None:
        module = {"pylibmc": "pylibmc", "pymemcache": "pymemcache", "redis": "redis"}[library]
        try:
            __import__(module)
        except ImportError as exc:
            reason = f"{module} is not installed ({exc})"
    if reason is not None:
        skip_or_fail(reason)
