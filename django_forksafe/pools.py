"""
Third-party connection pools in a child: dropped, so that the child makes a
fresh pool of its own on first use, without a word to the server. Their
sockets are silenced by then (see sockets), and the dropped pools are kept
alive for good, so that no deallocator of theirs runs in the child either.

One adapter per pool library, registered by forksafe() when it wraps a
backend built on that library. (Django's own pool is the registry's.)
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable
from typing import Any

# Every fork-safe wrapper of this process (weakly): pools cached on them.
_wrappers: weakref.WeakSet[Any] = weakref.WeakSet()
_adapters: dict[str, Callable[[], None]] = {}


def keep_forever(obj: Any) -> None:
    """Never free `obj`, so that no deallocator of it runs in this process."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def created(wrapper: Any) -> None:
    _wrappers.add(wrapper)


def adapt(wrapper_class: type) -> None:
    """Register the adapter of the pool library `wrapper_class` is built on."""
    modules = {klass.__module__.partition(".")[0] for klass in wrapper_class.__mro__}
    for module, forget in _ADAPTERS.items():
        if module in modules:
            _adapters.setdefault(module, forget)


def forget_inherited_pools() -> list[str]:
    """In a child: drop every inherited third-party pool. Returns the libraries."""
    for forget in list(_adapters.values()):
        forget()
    return sorted(_adapters)


def _forget_connection_pool() -> None:
    # django-db-connection-pool: SQLAlchemy QueuePools in a module-level dict
    # by alias, created under a class-level lock.
    from dj_db_conn_pool.core import pool_container

    for alias, pool in list(pool_container.items()):
        del pool_container[alias]
        keep_forever(pool)
    pool_container.lock = threading.Lock()  # Another thread may have held it.


def _forget_geventpool() -> None:
    # django-db-geventpool: pools in a class-level dict by alias, and cached
    # on each wrapper as _pool.
    from django_db_geventpool.backends.base import DatabaseWrapperMixin

    pools = DatabaseWrapperMixin._connection_pools
    for alias, pool in list(pools.items()):
        del pools[alias]
        keep_forever(pool)
    for wrapper in list(_wrappers):
        if getattr(wrapper, "_pool", None) is not None:
            wrapper._pool = None


_ADAPTERS: dict[str, Callable[[], None]] = {
    "dj_db_conn_pool": _forget_connection_pool,
    "django_db_geventpool": _forget_geventpool,
}
