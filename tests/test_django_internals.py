"""
Tripwires on the Django internals the wrapper mirrors. A Django release that
changes one of them fails here, loudly, instead of silently leaving a piece
of a child's state inherited:

- ensure_connection() is written out in wrapper.py (a frame less per query)
  on the strength of its body being `if self.connection is None: <connect>`;
- _forksafe_forget_connection() resets, by hand, the connection and
  transaction state that Django's __init__(), connect() and close() set;
- the PostgreSQL pool code reads the class's _connection_pools dict;
- DatabaseErrorWrapper.__enter__() does nothing: the checked one in
  wrapper.py does not call it;
- validate_no_broken_transaction() only raises on needs_rollback, SQLite's
  create_cursor() is one line, wrap_database_errors is a cached_property,
  the memcached backends' _cache is one, Signal keeps its lock as `lock`;
- and the third-party internals (each skipped where the library is not
  installed): django-db-geventpool's pool container, pymemcache's
  HashClient.clients / client_pool / sock, uwsgidecorators' postfork_chain.
  Where one of them moves, our error names it (tested at the end).

Fast: no server, no fork.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend

from django_forksafe.wrapper import ForkSafeMixin

# What _forksafe_forget_connection() resets: the connection, and every piece of
# transaction state a child must not inherit.
RESET = {
    "connection",
    "closed_in_transaction",
    "in_atomic_block",
    "savepoint_ids",
    "atomic_blocks",
    "commit_on_exit",
    "needs_rollback",
    "run_on_commit",
    "run_commit_hooks_on_set_autocommit_on",
    "autocommit",
    "errors_occurred",
    "health_check_done",
}
# What it leaves, and why.
KEPT = {
    "_thread_ident": "the thread that owns the wrapper: unchanged by a fork",
    "_thread_sharing_count": "the same",
    "_thread_sharing_lock": "the same (never held across a fork by Django's code)",
    "alias": "configuration",
    "settings_dict": "configuration",
    "client": "per-backend helper objects, no connection state",
    "creation": "the same",
    "features": "the same",
    "introspection": "the same",
    "ops": "the same",
    "validation": "the same",
    "execute_wrappers": "the code's own, installed with a context manager",
    "force_debug_cursor": "a debugging switch",
    "queries_log": "the debug log of queries: the child's copy is its own",
    "savepoint_state": "only a counter for savepoint names",
    "close_at": "set again by connect() from CONN_MAX_AGE",
    "health_check_enabled": "set again by connect() from CONN_HEALTH_CHECKS",
    "rollback_exc": "read only while needs_rollback is set, which is reset",
}


def attributes_set(function: Any) -> set[str]:
    """The `self.<name>` a function assigns."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                names.add(target.attr)
    return names


@pytest.mark.parametrize("method", ["__init__", "connect", "close"])
def test_every_attribute_django_sets_is_reset_or_kept_for_a_reason(method: str) -> None:
    unknown = attributes_set(getattr(BaseDatabaseWrapper, method)) - RESET - set(KEPT)
    assert not unknown, (
        f"Django {django.get_version()}'s BaseDatabaseWrapper.{method}() sets {sorted(unknown)}: "
        "decide whether a forked child must reset them (wrapper._forksafe_forget_connection)"
    )


def test_forget_connection_resets_what_it_says() -> None:
    """Every RESET attribute, set to something else, is back to what a fresh
    wrapper has (autocommit: as before the first connect())."""
    engine = load_backend("django_forksafe.backends.sqlite3")
    settings = {"NAME": ":memory:", **{key: None for key in ("TIME_ZONE", "HOST", "PORT", "USER", "PASSWORD")}}
    fresh = engine.DatabaseWrapper(settings, "tripwire")
    used = engine.DatabaseWrapper(settings, "tripwire")
    for name in RESET - {"connection", "closed_in_transaction"}:
        setattr(used, name, object())
    used.connection = object()
    used._forksafe_forget_connection()
    for name in RESET - {"closed_in_transaction"}:
        assert getattr(used, name) == getattr(fresh, name), name


def test_ensure_connection_body_is_what_the_wrapper_writes_out(django_db_blocker: Any) -> None:
    """wrapper.py's ensure_connection() checks, then calls Django's only when
    there is no connection: right only while Django's whole body is
    `if self.connection is None:` (its docstring aside)."""
    with django_db_blocker.unblock():  # pytest-django's patch of it, away.
        function = inspect.unwrap(BaseDatabaseWrapper.ensure_connection)
    definition = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    assert isinstance(definition, ast.FunctionDef)
    body = [
        node for node in definition.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
    ]
    assert len(body) == 1 and isinstance(body[0], ast.If) and not body[0].orelse, ast.unparse(definition)
    assert ast.unparse(body[0].test) == "self.connection is None", ast.unparse(definition)


def test_database_error_wrapper_enter_does_nothing() -> None:
    from django.db.utils import DatabaseErrorWrapper

    definition = ast.parse(textwrap.dedent(inspect.getsource(DatabaseErrorWrapper.__enter__))).body[0]
    assert isinstance(definition, ast.FunctionDef)
    assert [type(node) for node in definition.body] == [ast.Pass], ast.unparse(definition)


def test_ensure_connection_written_out_only_over_djangos() -> None:
    """A backend with an ensure_connection() of its own is called, not skipped."""
    for engine in ("sqlite3", "mysql", "postgresql"):
        try:
            backend = load_backend(f"django_forksafe.backends.{engine}")
        except ImproperlyConfigured:  # The driver is not installed here.
            continue
        next_class = backend.DatabaseWrapper.__mro__[backend.DatabaseWrapper.__mro__.index(ForkSafeMixin) + 1]
        assert next_class.ensure_connection is BaseDatabaseWrapper.ensure_connection


def test_postgresql_pools_dict_is_where_the_pool_code_reads_it() -> None:
    pytest.importorskip("psycopg")
    from django.db.backends.postgresql.base import DatabaseWrapper

    assert isinstance(DatabaseWrapper.__dict__.get("_connection_pools"), dict)
    assert isinstance(inspect.getattr_static(DatabaseWrapper, "pool"), property)
    assert callable(DatabaseWrapper.close_pool)


def test_mixin_subclass_is_what_forksafe_makes() -> None:
    """`class W(ForkSafeMixin, Backend.DatabaseWrapper)` gets what forksafe()
    gives: the checked ensure_connection(), pool and close_pool(), and
    Django's pool dict watched."""
    pytest.importorskip("psycopg")
    from django.db.backends.postgresql.base import DatabaseWrapper

    from django_forksafe import forksafe, pools

    class Written(ForkSafeMixin, DatabaseWrapper):
        pass

    made = forksafe(DatabaseWrapper)
    overridden = {name for name in ("ensure_connection", "pool", "close_pool") if name in vars(made)}
    assert overridden == {"ensure_connection", "pool", "close_pool"}
    assert {name for name in overridden if name in vars(Written)} == overridden
    assert id(DatabaseWrapper._connection_pools) in pools._django_pool_dicts  # type: ignore[attr-defined]


def body_of(function: Any) -> list[ast.stmt]:
    """A function's statements, its docstring aside."""
    definition = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(function)))).body[0]
    assert isinstance(definition, ast.FunctionDef)
    return [
        node for node in definition.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
    ]


def test_validate_no_broken_transaction_only_raises_on_needs_rollback() -> None:
    """The mixin's override calls Django's only when needs_rollback is set
    (a frame less on every execute()): right while Django's whole body is
    `if self.needs_rollback: raise ...`."""
    body = body_of(BaseDatabaseWrapper.validate_no_broken_transaction)
    source = "\n".join(ast.unparse(node) for node in body)
    assert len(body) == 1 and isinstance(body[0], ast.If) and not body[0].orelse, source
    assert ast.unparse(body[0].test) == "self.needs_rollback", source
    assert [type(node) for node in body[0].body] == [ast.Raise], source


def test_sqlite_create_cursor_is_what_sqlite_py_replaces() -> None:
    """sqlite.refuse_writes_clearly() puts a create_cursor() of its own on a
    wrapper, with a subclass of Django's cursor wrapper as the factory: right
    while Django's is `return self.connection.cursor(factory=SQLiteCursorWrapper)`."""
    from django.db.backends.sqlite3.base import DatabaseWrapper

    body = body_of(DatabaseWrapper.create_cursor)
    assert [ast.unparse(node) for node in body] == ["return self.connection.cursor(factory=SQLiteCursorWrapper)"]


def test_wrap_database_errors_is_a_cached_property_of_djangos_error_wrapper() -> None:
    """wrapper.py compares a class's wrap_database_errors with Django's (to
    leave a backend's own alone) and replaces it by a cached_property of its
    checked subclass of DatabaseErrorWrapper."""
    from django.utils.functional import cached_property

    from django_forksafe.wrapper import _DJANGOS_WRAP_DATABASE_ERRORS

    attribute = vars(BaseDatabaseWrapper).get("wrap_database_errors")
    assert isinstance(attribute, cached_property)
    assert [ast.unparse(node) for node in body_of(attribute.func)] == ["return DatabaseErrorWrapper(self)"]
    assert attribute is _DJANGOS_WRAP_DATABASE_ERRORS


@pytest.mark.parametrize("backend", ["PyLibMCCache", "PyMemcacheCache"])
def test_memcached_client_is_a_cached_property(backend: str) -> None:
    """cache.py builds Django's client through the cached_property's function
    (and shadows it with a property of its own)."""
    from django.core.cache.backends import memcached
    from django.utils.functional import cached_property

    from django_forksafe import cache
    from django_forksafe.subclassing import defined_after

    ours = getattr(cache, backend)
    assert isinstance(defined_after(ours, cache.ForkSafeMemcachedMixin, "_cache"), cached_property)
    assert isinstance(vars(memcached.BaseMemcachedCache).get("_cache"), cached_property)


def test_signal_lock_is_the_lock_registry_replaces_in_a_child() -> None:
    """Invalidation gives post_fork a new lock, in case another thread of the
    parent held it at the fork: right while Signal keeps one threading.Lock,
    as `lock`, and connect() and disconnect() take it."""
    import threading

    from django.dispatch import Signal

    assert isinstance(Signal().lock, type(threading.Lock()))
    for method in (Signal.connect, Signal.disconnect):
        assert "with self.lock:" in inspect.getsource(method), method


# Third-party internals --------------------------------------------------------


def test_geventpool_pools_are_where_the_adapter_drops_them() -> None:
    """django-db-geventpool keeps its pools by alias in
    DatabaseWrapperMixin._connection_pools (4.x; a module-level
    connection_pools before): the adapter drops them from there."""
    pytest.importorskip("django_db_geventpool")
    from django_db_geventpool.backends.base import DatabaseWrapperMixin

    from django_forksafe import pools

    containers = pools.geventpool_containers()
    assert len(containers) == 1 and containers[0] is DatabaseWrapperMixin._connection_pools
    assert "self._connection_pools[self.alias] = self._pool" in inspect.getsource(DatabaseWrapperMixin)


def test_pymemcache_clients_and_sockets_are_where_cache_py_reads_them() -> None:
    """cache.py finds a HashClient's per-server clients in `clients`, a
    PooledClient's in `client_pool` (`used` and `free`), and a Client's
    socket as `sock`."""
    pytest.importorskip("pymemcache")
    from pymemcache.client.base import Client, PooledClient  # type: ignore[import-not-found,unused-ignore]
    from pymemcache.client.hash import HashClient  # type: ignore[import-not-found,unused-ignore]

    hashed = HashClient([("127.0.0.1", 1), ("127.0.0.1", 2)])
    assert isinstance(hashed.clients, dict) and len(hashed.clients) == 2
    pooled = PooledClient(("127.0.0.1", 1))
    assert list(pooled.client_pool.used) == [] and list(pooled.client_pool.free) == []  # Filled on use.
    assert Client(("127.0.0.1", 1)).sock is None  # Connected lazily.
    assert "self.sock = sock" in inspect.getsource(Client._connect)


def test_uwsgidecorators_postfork_chain_is_what_uwsgi_detection_reads() -> None:
    """uwsgi_detection looks for our hook in uwsgidecorators.postfork_chain,
    the list its @postfork fills and its post_fork_hook runs. The module
    imports uWSGI's own, so it is read, not imported."""
    import importlib.util

    spec = importlib.util.find_spec("uwsgidecorators")
    if spec is None or spec.origin is None:
        pytest.skip("uwsgidecorators is not installed")
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    assigned = {
        target.id: ast.unparse(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert assigned.get("postfork_chain") == "[]"
    hook = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "postfork_chain_hook")
    assert "for f in postfork_chain" in ast.unparse(hook)


# Where a library moves, the error names it ----------------------------------


def test_geventpool_moved_elsewhere_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("django_db_geventpool")
    from importlib.metadata import version

    from django_db_geventpool.backends.base import DatabaseWrapperMixin

    from django_forksafe import pools

    monkeypatch.delattr(DatabaseWrapperMixin, "_connection_pools")
    expected = f"django-db-geventpool {version('django-db-geventpool')} keeps its pools neither in"
    with pytest.raises(RuntimeError, match=expected):
        pools.geventpool_containers()


def test_geventpool_before_4_module_level_pools_are_dropped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier releases kept them in a module-level connection_pools."""
    pytest.importorskip("django_db_geventpool")
    import django_db_geventpool.backends.base as geventpool_base

    from django_forksafe import pools

    module_level: dict[str, Any] = {}
    monkeypatch.delattr(geventpool_base.DatabaseWrapperMixin, "_connection_pools")
    monkeypatch.setattr(geventpool_base, "connection_pools", module_level, raising=False)
    containers = pools.geventpool_containers()
    assert len(containers) == 1 and containers[0] is module_level


def test_uwsgidecorators_without_postfork_chain_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under uWSGI (its module, made at run time, has no __file__), with a
    uwsgidecorators that keeps its @postfork hooks elsewhere: W002 says so."""
    import sys
    import types

    from django_forksafe.contrib import uwsgi_detection

    monkeypatch.setitem(sys.modules, "uwsgi", types.ModuleType("uwsgi"))
    monkeypatch.setitem(sys.modules, "uwsgidecorators", types.ModuleType("uwsgidecorators"))
    message = uwsgi_detection.hook_missing()
    assert message is not None and "postfork_chain" in message
