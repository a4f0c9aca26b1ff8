"""
Memcached backends of one's own, built on Django's, for forksafe_cache():

* ``ThreadLocal…``: a ``_cache`` property that keeps its client in a
  ``threading.local`` (django-pylibmc's pattern), which forksafe_cache()
  refuses; ``ForcedThreadLocal…`` has our mixin put on it all the same, and
  raises TypeError at its first use;
* ``ForkSafeOwn…``: a ``_cache`` cached_property of its own, made fork-safe.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends import memcached
from django.utils.functional import cached_property

from django_forksafe.cache import ForkSafePyLibMCMixin, ForkSafePyMemcacheMixin, forksafe_cache


class _ThreadLocalClient:
    _class: Any
    _options: Any
    client_servers: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local = threading.local()

    @property
    def _cache(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._class(self.client_servers, **self._options)
        return client


class ThreadLocalPyLibMCCache(_ThreadLocalClient, memcached.PyLibMCCache):
    pass


class ThreadLocalPyMemcacheCache(_ThreadLocalClient, memcached.PyMemcacheCache):
    pass


class ForcedThreadLocalPyLibMCCache(ForkSafePyLibMCMixin, ThreadLocalPyLibMCCache):
    pass


class ForcedThreadLocalPyMemcacheCache(ForkSafePyMemcacheMixin, ThreadLocalPyMemcacheCache):
    pass


class _OwnClient:
    _class: Any
    _options: Any
    client_servers: Any

    @cached_property
    def _cache(self) -> Any:
        return self._class(self.client_servers, **self._options)


class OwnPyLibMCCache(_OwnClient, memcached.PyLibMCCache):
    pass


class OwnPyMemcacheCache(_OwnClient, memcached.PyMemcacheCache):
    pass


ForkSafeOwnPyLibMCCache = forksafe_cache(OwnPyLibMCCache)
ForkSafeOwnPyMemcacheCache = forksafe_cache(OwnPyMemcacheCache)
