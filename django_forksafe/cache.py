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
without DNS for IP addresses, ``localhost`` and Unix sockets, a host name
resolved once; in the child, the sockets of every inherited pymemcache
client are silenced too, whatever was recorded. The dropped clients are
kept alive for good, so that no deallocator of theirs runs in the child;
the child's own is made like the parent's (its run-time settings kept).
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.cache.backends import memcached
from django.utils.functional import cached_property
from django.utils.module_loading import import_string

from django_forksafe import endpoints, registry, silencing
from django_forksafe.detection import NATIVE, PROCESS_MARK
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
    one made from the inherited one, so that what was set on it at run time
    (pylibmc's behaviors, pymemcache's servers) holds in the child too. State
    on the object: ``_forksafe_client`` (the client) and, in a child until its
    first use, ``_forksafe_inherited`` (the parent's, dropped).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for host, port in self._forksafe_servers():
            # A host name is resolved here: looking at the connected peer
            # instead would cost every operation until it connects (for good
            # if the server is down), and miss a fork after the first.
            endpoints.remember_server(host, port)

    def _forksafe_get_client(self) -> Any:
        # Django's methods read _cache once per operation (what that costs a
        # get: docs/performance.rst).
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        try:
            return self._forksafe_client
        except AttributeError:
            pass
        # Outside the except block: an error of the client's own is not
        # reported as raised while handling our AttributeError.
        return self._forksafe_connect()

    def _forksafe_set_client(self, client: Any) -> None:
        # What assigning to Django's cached_property does: this client from now on.
        del self._cache
        self._forksafe_track(client)

    def _forksafe_delete_client(self) -> None:
        # What deleting Django's cached_property does: a new client on next use.
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        vars(self).pop("_forksafe_inherited", None)
        client = vars(self).pop("_forksafe_client", None)
        if client is not None:
            _open_clients.pop(id(client), None)  # Left to the GC, as by Django.

    # With the C extension, the same in C where it is read on every get (the
    # mark, then _forksafe_client); the rest is the methods above.
    _cache = (
        property(_forksafe_get_client, _forksafe_set_client, _forksafe_delete_client)
        if NATIVE is None or PROCESS_MARK is not NATIVE.PROCESS_MARK
        else NATIVE.checked_client(
            "_forksafe_client",
            registry.invalidate_if_forked,
            operator.methodcaller("_forksafe_connect"),
            _forksafe_set_client,
            _forksafe_delete_client,
        )
    )

    def _forksafe_connect(self) -> Any:
        inherited = vars(self).pop("_forksafe_inherited", None)
        client = self._forksafe_new_client() if inherited is None else self._forksafe_client_like(inherited)
        self._forksafe_track(client)
        return client

    def _forksafe_new_client(self) -> Any:
        """The client Django's _cache builds. Its cached_property would also
        store it through the instance's __dict__, which is then no longer
        kept inline: every attribute and method lookup of Django's on the
        object gets slower (more instructions on every get)."""
        django_cache = defined_after(type(self), ForkSafeMemcachedMixin, "_cache")
        if not isinstance(django_cache, _CACHED_PROPERTIES):
            # forksafe_cache() refuses such a class; one composed by hand (or
            # a Django whose _cache moved) gets no fallback that could hand a
            # child its parent's client.
            raise TypeError(_not_a_cached_property(type(self), django_cache))
        return django_cache.func(self)

    def _forksafe_client_like(self, inherited: Any) -> Any:
        """In a child: a client of its own, set up as the parent's was, built
        without a byte on the parent's connections."""
        return self._forksafe_new_client()

    def _forksafe_track(self, client: Any) -> None:
        # The cache object may go (a thread's, at its end): Django would let
        # the client go with it.
        forget = registry.forget_when_collected(_open_clients, id(client))
        _open_clients[id(client)] = _OpenClient(client, os.getpid(), weakref.ref(self, forget))
        self._forksafe_client = client

    def _forksafe_forget_client(self, client: Any) -> None:
        """In a child: Django's next use builds a client of its own, like this one."""
        if vars(self).get("_forksafe_client") is client:
            del self._forksafe_client
            self._forksafe_inherited = client

    def _forksafe_servers(self) -> list[tuple[str, int]]:
        """Each server as (host, port), or (socket path, 0)."""
        raise NotImplementedError


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

    def _forksafe_client_like(self, inherited: Any) -> Any:
        # Django's client, with the behaviors the parent's has now (set at run
        # time too: `client.behaviors = {...}`), read from libmemcached's
        # struct without a byte sent. Those that differ only: some cannot be
        # set to what they read (verify_keys with the binary protocol).
        # pylibmc's clone() would keep them too, but on CPython 3.13 prints
        # an ignored exception per behavior (it calls __init__ without servers).
        client = self._forksafe_new_client()
        inherited_behaviors = getattr(inherited, "behaviors", None)
        if inherited_behaviors is not None:
            own = client.behaviors
            client.behaviors = {name: value for name, value in inherited_behaviors.items() if own.get(name) != value}
        return client


class ForkSafePyMemcacheMixin(ForkSafeMemcachedMixin):
    def _forksafe_servers(self) -> list[tuple[str, int]]:
        from pymemcache.client.base import normalize_server_spec  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return [_server_endpoint(normalize_server_spec(spec)) for spec in self.client_servers]

    def _forksafe_client_like(self, inherited: Any) -> Any:
        from pymemcache.client.hash import HashClient  # type: ignore[import-not-found,import-untyped,unused-ignore]

        if not isinstance(inherited, HashClient):
            return self._forksafe_new_client()
        # The parent's HashClient, with a client of its own per server (made
        # by pymemcache's add_server(), so that servers added at run time are
        # there too) and the parent's hashing: which servers are in, which
        # were taken out or held for dead, so each key goes where it went.
        client = copy.copy(inherited)
        client.clients = {}
        client.hasher = type(inherited.hasher)()
        client._failed_clients = dict(inherited._failed_clients)
        client._dead_clients = dict(inherited._dead_clients)
        for per_server in inherited.clients.values():
            client.add_server(per_server.server)
        client.hasher = copy.deepcopy(inherited.hasher)
        return client


def _server_endpoint(server: Any) -> tuple[str, int]:
    """pymemcache's normalized server, (host, port) or a socket path, as (host, port) or (path, 0)."""
    return (server, 0) if isinstance(server, str) else (str(server[0]), int(server[1]))


def _client_sockets(client: Any) -> list[tuple[Any, str, int]]:
    """The Python sockets a client holds (pymemcache's: a HashClient's
    Client or PooledClient per server, a pool's clients), each with its
    server as (host, port) or (path, 0). None for pylibmc's (libmemcached's
    own), which only the endpoint table reaches."""
    per_server = list(getattr(client, "clients", {}).values()) or [client]
    found = []
    for one in per_server:
        pool = getattr(one, "client_pool", None)
        for member in [*pool.used, *pool.free] if pool is not None else [one]:
            sock = getattr(member, "sock", None)
            if sock is not None:
                found.append((sock, *_server_endpoint(member.server)))
    return found


def forget_inherited_clients(pid: int) -> None:
    """In a child (registry's invalidation): drop every client another
    process built, without a byte to the server; keep it alive for good;
    silence its sockets, whether or not fork() did (their server's address
    may not be recorded: a host name that resolved elsewhere)."""
    inherited_sockets = []
    for key in [key for key, entry in _open_clients.items() if entry.pid != pid]:
        entry = _open_clients.pop(key, None)
        if entry is None:
            continue  # Taken meanwhile (by a signal handler).
        silencing.keep_forever(entry.client)  # Before the cache object lets go of it.
        cache = entry.cache_ref()
        if cache is not None:
            cache._forksafe_forget_client(entry.client)
        inherited_sockets.extend(_client_sockets(entry.client))
    if inherited_sockets:
        silencing.silence_connected(inherited_sockets)


registry.on_invalidation(forget_inherited_clients)


def forksafe_cache(cache_class: CacheClass) -> CacheClass:
    """
    A fork-safe subclass of a memcached cache backend built on Django's
    (pylibmc or pymemcache), for a ``BACKEND`` of your own::

        from some_package import SomeMemcachedCache
        from django_forksafe.cache import forksafe_cache
        SomeMemcachedCache = forksafe_cache(SomeMemcachedCache)

    TypeError (saying why, and what to do) for a class it cannot make fork-safe.
    """
    reason = refusal(cache_class)
    if reason is not None:
        raise TypeError(reason)
    if issubclass(cache_class, ForkSafeMemcachedMixin):
        return cache_class
    mixin = ForkSafePyLibMCMixin if issubclass(cache_class, memcached.PyLibMCCache) else ForkSafePyMemcacheMixin
    return fork_safe_subclass(cache_class, mixin, sys._getframe(1).f_globals.get("__name__", __name__))


def refusal(cache_class: Any) -> str | None:
    """Why forksafe_cache() cannot make `cache_class` fork-safe, with what
    to do instead; None if it can (or it is already)."""
    if not (isinstance(cache_class, type) and issubclass(cache_class, memcached.BaseMemcachedCache)):
        return (
            "forksafe_cache() takes a memcached cache backend class, a subclass of "
            f"django.core.cache.backends.memcached.BaseMemcachedCache; got {cache_class!r}."
        )
    if issubclass(cache_class, ForkSafeMemcachedMixin):
        return None
    name = f"{cache_class.__module__}.{cache_class.__qualname__}"
    if not issubclass(cache_class, memcached.PyLibMCCache | memcached.PyMemcacheCache):
        return (
            f"{name} is built on neither Django's PyLibMCCache nor its PyMemcacheCache: forksafe_cache() "
            "cannot tell how it makes its client. Subclass one of them."
        )
    client = inspect.getattr_static(cache_class, "_cache")
    if not isinstance(client, _CACHED_PROPERTIES):
        return _not_a_cached_property(cache_class, client)
    return None


def _not_a_cached_property(cache_class: type, client: Any) -> str:
    # A child would get the parent's client back from wherever it keeps it.
    return (
        f"{cache_class.__module__}.{cache_class.__qualname__} defines _cache as a {type(client).__name__}, "
        "not as a cached_property: it may keep its client where a child gets the parent's back (a "
        "threading.local, as django-pylibmc does). Build the client in a cached_property named _cache, as "
        "Django's backend does (setting run-time options there), and forksafe_cache() makes that class "
        "fork-safe."
    )


_CACHED_PROPERTIES = (cached_property, functools.cached_property)

PyLibMCCache = forksafe_cache(memcached.PyLibMCCache)
PyMemcacheCache = forksafe_cache(memcached.PyMemcacheCache)


def backend_hint(backend: str) -> str:
    """What to use instead of the memcached BACKEND `backend`, as a sentence."""
    if backend in REPLACEMENTS:
        return f"Use BACKEND = {REPLACEMENTS[backend]!r}."
    try:
        reason = refusal(import_string(backend))
    except ImportError:
        reason = None
    if reason is not None:
        return f"{reason} Or use Django's own, fork-safe: BACKEND = {' or '.join(map(repr, REPLACEMENTS.values()))}."
    return f"Use as BACKEND a class made with django_forksafe.cache.forksafe_cache(<{backend}>)."
