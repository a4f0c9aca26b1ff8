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
  wrapper.py does not call it.

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
