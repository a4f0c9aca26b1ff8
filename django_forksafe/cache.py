"""
Fork-safe memcached cache backends: change one line in ``CACHES``.

.. code-block:: python

    CACHES = {"default": {"BACKEND": "django_forksafe.cache.PyLibMCCache", "LOCATION": "127.0.0.1:11211"}}
    # or "django_forksafe.cache.PyMemcacheCache"

Django's memcached backends build their client once per cache object (a
``cached_property``) and keep it: a forked child inherits the client and its
sockets, and parent and children then read each other's replies (wrong
values, pymemcache's ``MemcacheUnexpectedCloseError``, hangs), while a
child's pylibmc client says ``quit`` on the parent's connection when it is
freed. Here, ``_cache`` reads the process mark first (one memory load, see
detection); in a child, registry's invalidation (the at-fork handler, or
this first use after a fork behind Python's back) drops every inherited
client without a byte to the server, and the child lazily builds its own.

The inherited sockets are silenced like the database ones (see silencing): the
endpoints ``LOCATION`` names are recorded when the cache object is made,
without DNS for IP addresses, ``localhost`` and Unix sockets; a host name's
is the connected peer (pymemcache) or resolved once (pylibmc, whose sockets
Python cannot see). The dropped clients are kept alive for good, so that no
deallocator of theirs runs in the child.
"""

from __future__ import annotations

import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.cache.backends import memcached
from django.utils.functional import cached_property

from django_forksafe import endpoints, registry, silencing
from django_forksafe.detection import PROCESS_MARK
from django_forksafe.subclassing import defined_after, fork_safe_subclass

CacheClass = TypeVar("CacheClass", bound=type[memcached.BaseMemcachedCache])

DEFAULT_PORT = 11211

# Django's memcached backends and their fork-safe replacements.
REPLACEMENTS = {
    "django.core.cache.backends.memcached.PyLibMCCache": "django_forksafe.cache.PyLibMCCache",
    "django.core.cache.backends.memcached.PyMemcacheCache": "django_forksafe.cache.PyMemcacheCache",
}


@dataclass(frozen=True)
class _OpenClient:
    client: Any
    pid: int
    cache_ref: weakref.ref[ForkSafeMemcachedMixin]


# Strong references on purpose, as registry's to raw connections: in a child,
# CPython frees the other threads' state (and with it their thread-local
# cache objects) before the at-fork handlers run, and libmemcached's
# deallocator sends `quit` on the parent's connection.
_open_clients: dict[int, _OpenClient] = {}


class ForkSafeMemcachedMixin(memcached.BaseMemcachedCache):
    """
    Shadows Django's ``_cache`` (the client, built on first use): every
    access first reads the process mark. In the process that built it, the
    client is Django's, unchanged (``close()`` included); in a child, a new
    one. State on the object: ``_forksafe_client`` (the client, once its
    endpoints are all recorded), ``_forksafe_unrecorded`` (servers named by
    host name whose peer is not yet recorded) and ``_forksafe_pending`` (the
    client until then).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._forksafe_unrecorded = self._forksafe_remember_servers()

    @property
    def _cache(self) -> Any:
        # Django's methods read it once per operation (get: 0.7 % more
        # instructions than Django's own, on CPython 3.11).
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        try:
            return self._forksafe_client
        except AttributeError:
            pass
        # Outside the except block: an error of the client's own is not
        # reported as raised while handling our AttributeError.
        return self._forksafe_connect()

    @_cache.setter
    def _cache(self, client: Any) -> None:
        # What assigning to Django's cached_property does: this client from now on.
        del self._cache
        self._forksafe_track(client)

    @_cache.deleter
    def _cache(self) -> None:
        # What deleting Django's cached_property does: a new client on next use.
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        for name in ("_forksafe_client", "_forksafe_pending"):
            client = getattr(self, name, None)
            if client is not None:
                delattr(self, name)
                _open_clients.pop(id(client), None)  # Left to the GC, as by Django.

    def _forksafe_connect(self) -> Any:
        client = getattr(self, "_forksafe_pending", None)
        if client is None:
            client = self._forksafe_new_client()
            self._forksafe_track(client)
        else:
            self._forksafe_remember_peers(client)
        return client

    def _forksafe_new_client(self) -> Any:
        """The client Django's _cache builds. Its cached_property would also
        store it through the instance's __dict__, which is then no longer
        kept inline: every attribute and method lookup of Django's on the
        object gets slower (3 % more instructions per get, on CPython 3.11)."""
        django_cache = defined_after(type(self), ForkSafeMemcachedMixin, "_cache")
        if isinstance(django_cache, cached_property):
            return django_cache.func(self)
        return super()._cache  # type: ignore[misc]  # Not in django-stubs.

    def _forksafe_track(self, client: Any) -> None:
        # The cache object may go (a thread's, at its end): Django would let
        # the client go with it.
        forget = registry.forget_when_collected(_open_clients, id(client))
        _open_clients[id(client)] = _OpenClient(client, os.getpid(), weakref.ref(self, forget))
        if self._forksafe_unrecorded:
            self._forksafe_pending = client
            self._forksafe_remember_peers(client)
        else:
            self._forksafe_client = client

    def _forksafe_forget_client(self, client: Any) -> None:
        """In a child: Django's next use builds a client of its own."""
        for name in ("_forksafe_client", "_forksafe_pending"):
            if getattr(self, name, None) is client:
                delattr(self, name)

    def _forksafe_servers(self) -> list[tuple[str, int]]:
        """Each server as (host, port), or (socket path, 0)."""
        raise NotImplementedError

    def _forksafe_remember_servers(self) -> set[tuple[str, int]]:
        """Record the servers' endpoints that need no DNS; return the others."""
        unrecorded = set()
        for host, port in self._forksafe_servers():
            if not endpoints.remember_server(host, port, resolve=not self._forksafe_sockets_visible()):
                unrecorded.add((host, port))
        return unrecorded

    def _forksafe_sockets_visible(self) -> bool:
        """Whether the client's sockets can be found from Python."""
        return False

    def _forksafe_remember_peers(self, client: Any) -> None:
        """Record the peers of the client's connected sockets; once every
        server named by host name has one, the fast path takes over."""
        for (host, port), sock in self._forksafe_sockets(client):
            if sock is not None and (host, port) in self._forksafe_unrecorded:
                endpoints.remember_peer(sock)
                self._forksafe_unrecorded.discard((host, port))
        if not self._forksafe_unrecorded and getattr(self, "_forksafe_pending", None) is client:
            del self._forksafe_pending
            self._forksafe_client = client

    def _forksafe_sockets(self, client: Any) -> list[tuple[tuple[str, int], Any]]:
        return []


class ForkSafePyLibMCMixin(ForkSafeMemcachedMixin):
    def _forksafe_servers(self) -> list[tuple[str, int]]:
        from pylibmc.client import translate_server_spec  # type: ignore[import-not-found,import-untyped,unused-ignore]

        servers = []
        for spec in self.client_servers:
            if isinstance(spec, tuple):  # (server type, address, port), as pylibmc takes it.
                _, address, port = spec
            else:
                _, address, port, _ = translate_server_spec(str(spec), port=DEFAULT_PORT)
            servers.append((str(address), int(port or 0)))
        return servers


class ForkSafePyMemcacheMixin(ForkSafeMemcachedMixin):
    def _forksafe_servers(self) -> list[tuple[str, int]]:
        from pymemcache.client.base import normalize_server_spec  # type: ignore[import-not-found,import-untyped,unused-ignore]

        servers = []
        for spec in self.client_servers:
            server = normalize_server_spec(spec)
            servers.append((server, 0) if isinstance(server, str) else (str(server[0]), int(server[1])))
        return servers

    def _forksafe_sockets_visible(self) -> bool:
        return True

    def _forksafe_sockets(self, client: Any) -> list[tuple[tuple[str, int], Any]]:
        # HashClient: a Client or PooledClient per server, by "host:port".
        found: list[tuple[tuple[str, int], Any]] = []
        for per_server in getattr(client, "clients", {}).values():
            server = per_server.server
            endpoint = (server, 0) if isinstance(server, str) else (str(server[0]), int(server[1]))
            pool = getattr(per_server, "client_pool", None)
            members = [*pool.used, *pool.free] if pool is not None else [per_server]
            found.extend((endpoint, getattr(member, "sock", None)) for member in members)
        return found


def forget_inherited_clients(pid: int) -> None:
    """In a child (registry's invalidation): drop every client another
    process built, without a byte to the server; keep it alive for good."""
    for key in [key for key, entry in _open_clients.items() if entry.pid != pid]:
        entry = _open_clients.pop(key, None)
        if entry is None:
            continue  # Taken meanwhile (by a signal handler).
        silencing.keep_forever(entry.client)  # Before the cache object lets go of it.
        cache = entry.cache_ref()
        if cache is not None:
            cache._forksafe_forget_client(entry.client)


registry.on_invalidation(forget_inherited_clients)


def forksafe_cache(cache_class: CacheClass) -> CacheClass:
    """
    A fork-safe subclass of a memcached cache backend built on Django's
    (pylibmc or pymemcache), for a ``BACKEND`` of your own::

        from some_package import SomeMemcachedCache
        from django_forksafe.cache import forksafe_cache
        SomeMemcachedCache = forksafe_cache(SomeMemcachedCache)
    """
    if not (isinstance(cache_class, type) and issubclass(cache_class, memcached.BaseMemcachedCache)):
        raise TypeError(
            "forksafe_cache() takes a memcached cache backend class, a subclass of "
            f"django.core.cache.backends.memcached.BaseMemcachedCache; got {cache_class!r}."
        )
    if issubclass(cache_class, ForkSafeMemcachedMixin):
        return cache_class
    if issubclass(cache_class, memcached.PyLibMCCache):
        mixin: type[ForkSafeMemcachedMixin] = ForkSafePyLibMCMixin
    elif issubclass(cache_class, memcached.PyMemcacheCache):
        mixin = ForkSafePyMemcacheMixin
    else:
        raise TypeError(f"{cache_class!r} is built on neither pylibmc nor pymemcache.")
    return fork_safe_subclass(cache_class, mixin, sys._getframe(1).f_globals.get("__name__", __name__))


PyLibMCCache = forksafe_cache(memcached.PyLibMCCache)
PyMemcacheCache = forksafe_cache(memcached.PyMemcacheCache)


def suggest_backend(backend: str) -> str:
    """The fork-safe BACKEND to use instead of `backend`."""
    return REPLACEMENTS.get(backend, f"a class made with django_forksafe.cache.forksafe_cache(<{backend}>)")
