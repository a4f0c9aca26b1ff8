"""
Connection pools in a child: dropped, so that the child makes a fresh pool
of its own on first use, without a word to the server. Their sockets are
silenced by then (see silencing), and the dropped pools are kept alive for
good, so that no deallocator of theirs runs in the child either.

Django's own pool (PostgreSQL, Django 5.1 and later) first; then one adapter
per third-party pool library (``register_adapter()``), used once forksafe()
wraps a backend built on that library. All run from the registry's
invalidation.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from django_forksafe import registry
from django_forksafe.silencing import keep_forever, one_by_one

# Every fork-safe wrapper of this process (weakly): pools cached on them.
_wrappers: weakref.WeakSet[Any] = weakref.WeakSet()
# Every adapter, by the top-level module of its library; and those of the
# libraries a fork-safe wrapper class of this process is built on.
_known_adapters: dict[str, Callable[[], None]] = {}
# Every fork-safe wrapper class adapt() has seen (weakly), for an adapter registered later.
_wrapper_classes: weakref.WeakSet[type] = weakref.WeakSet()
_adapters: dict[str, Callable[[], None]] = {}

# Where Django keeps its pools: the class-level DatabaseWrapper._connection_pools
# dicts of the wrapper classes we made, by id.
_django_pool_dicts: dict[int, dict[str, Any]] = {}
# The process each of Django's pools we have taken connections from was opened
# in, by id (weakly: Django holds the pools). A pool missing here dates from
# before the fork too, say one a master warmed up with pool.open().
_django_pool_pids: dict[int, int] = {}


def watch_django_pools(pools: dict[str, Any]) -> None:
    """Record a dict where Django keeps connection pools, by alias."""
    _django_pool_dicts[id(pools)] = pools


def opened_django_pool(pool: Any) -> None:
    """Record that this process opened `pool`."""
    key = id(pool)
    if key not in _django_pool_pids:
        weakref.finalize(pool, _django_pool_pids.pop, key, None).atexit = False
        _django_pool_pids[key] = registry.known_pid()


def _forget_django_pools(pid: int) -> None:
    inherited = [
        (pools, alias, pool)
        for pools in list(_django_pool_dicts.values())
        for alias, pool in list(pools.items())
        if _django_pool_pids.get(id(pool)) != pid
    ]
    if not inherited:
        return
    with one_by_one() as silence:
        for pools, alias, pool in inherited:
            # The pool's threads did not survive the fork and its idle
            # connections are the parent's sessions: never close() it or let
            # its __del__ run. Without it in Django's dict, the child lazily
            # makes a pool of its own.
            if pools.get(alias) is not pool:
                continue  # Taken meanwhile (by a signal handler).
            keep_forever(pool)  # First: an exception between the two never frees it.
            del pools[alias]
            for idle in list(getattr(pool, "_pool", ())):  # psycopg_pool's idle connections.
                with registry.logged("could not silence a connection of an inherited pool"):
                    silence(idle)


def created(wrapper: Any) -> None:
    _wrappers.add(wrapper)


def register_adapter(library: str, forget: Callable[[], None]) -> None:
    """Have `forget()` drop every pool of a pool library that a child
    inherited, once a fork-safe wrapper class is built on that library: one
    whose MRO holds a class of the top-level module `library`."""
    if not library or "." in library:
        raise ValueError(
            f"register_adapter() takes the top-level module name of a pool library, such as "
            f"'dj_db_conn_pool'; got {library!r}."
        )
    _known_adapters[library] = forget
    if library in _adapters:
        _adapters[library] = forget
    for wrapper_class in _wrapper_classes:
        adapt(wrapper_class)


def adapt(wrapper_class: type) -> None:
    """Use the adapter of the pool library `wrapper_class` is built on."""
    _wrapper_classes.add(wrapper_class)
    modules = {klass.__module__.partition(".")[0] for klass in wrapper_class.__mro__}
    for module, forget in _known_adapters.items():
        if module in modules:
            _adapters.setdefault(module, forget)


def forget_inherited_pools(pid: int) -> None:
    """In a child: drop every inherited pool, Django's and third-party ones."""
    _forget_django_pools(pid)
    for library, forget in list(_adapters.items()):
        with registry.logged(f"could not drop an inherited {library} pool"):
            forget()


def _forget_connection_pool() -> None:
    # django-db-connection-pool: SQLAlchemy QueuePools in a module-level dict
    # by alias, created under a class-level lock.
    from dj_db_conn_pool.core import pool_container

    for alias, pool in list(pool_container.items()):
        keep_forever(pool)  # First: an exception between the two never frees it.
        del pool_container[alias]
    pool_container.lock = threading.Lock()  # Another thread may have held it.


def geventpool_containers() -> list[dict[str, Any]]:
    """Where django-db-geventpool keeps its pools by alias: the class-level
    DatabaseWrapperMixin._connection_pools (4.x), or a module-level
    connection_pools in its backend modules (older releases)."""
    containers: list[dict[str, Any]] = []
    base = sys.modules.get("django_db_geventpool.backends.base")
    mixin = getattr(base, "DatabaseWrapperMixin", None)
    if isinstance(getattr(mixin, "_connection_pools", None), dict):
        containers.append(mixin._connection_pools)  # type: ignore[union-attr]
    for name, module in list(sys.modules.items()):
        pools = getattr(module, "connection_pools", None) if name.startswith("django_db_geventpool.") else None
        if isinstance(pools, dict) and not any(pools is known for known in containers):
            containers.append(pools)
    if not containers:
        from importlib.metadata import version

        raise RuntimeError(
            f"django-db-geventpool {version('django-db-geventpool')} keeps its pools neither in "
            "DatabaseWrapperMixin._connection_pools (4.x) nor in a module-level connection_pools "
            "(earlier releases): django-forksafe cannot drop the inherited ones. Their sockets are "
            "silenced all the same; report the version, or drop the pools in a post_fork receiver."
        )
    return containers


def _forget_geventpool() -> None:
    # django-db-geventpool: pools in a dict by alias, and cached on each
    # wrapper as _pool.
    for pools in geventpool_containers():
        for alias, pool in list(pools.items()):
            keep_forever(pool)
            del pools[alias]
    for wrapper in list(_wrappers):
        if getattr(wrapper, "_pool", None) is not None:
            wrapper._pool = None


register_adapter("dj_db_conn_pool", _forget_connection_pool)
register_adapter("django_db_geventpool", _forget_geventpool)


registry.on_invalidation(forget_inherited_pools)
