"""The fork-safe DatabaseWrapper mixin, and forksafe() which applies it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import django
from django.core.signals import request_started
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import DatabaseErrorWrapper
from django.utils.asyncio import async_unsafe
from django.utils.functional import cached_property

from django_forksafe import endpoints, pools, registry, silencing, sqlite
from django_forksafe.detection import NATIVE, PROCESS_MARK
from django_forksafe.subclassing import fork_safe_subclass

WrapperClass = TypeVar("WrapperClass", bound=type[BaseDatabaseWrapper])
# Before any test patches it (Django's runner imports us at setup()).
_DJANGOS_ENSURE_CONNECTION = BaseDatabaseWrapper.ensure_connection
_DJANGOS_WRAP_DATABASE_ERRORS = vars(BaseDatabaseWrapper).get("wrap_database_errors")
if not isinstance(_DJANGOS_WRAP_DATABASE_ERRORS, cached_property):  # tests/test_django_internals.py pins it.
    raise ImportError(
        "django-forksafe reads Django's BaseDatabaseWrapper.wrap_database_errors, a cached_property, "
        f"which Django {django.get_version()} no longer has: this Django release is not supported yet."
    )


class ForkSafeMixin(BaseDatabaseWrapper):
    """
    Records which process opened each connection, and lets a child process
    drop inherited connections without sending anything to the server.

    With the C extension, every fork has the inherited database sockets
    silenced inside fork() itself; without it, a fork through Python is
    handled by the at-fork handler (see registry). Otherwise, and for
    Django's state with the C extension (unless post_fork has receivers),
    the fork is noticed at the first use of the wrapper's state, before any
    byte is sent: ensure_connection() (every cursor, chunked or
    not, autocommit, ``connection.connection`` after it), a cursor held
    across the fork executing again, in_atomic_block and atomic_blocks (what
    atomic() decides from), commit and rollback, the health-check ping,
    close(), and Django's PostgreSQL pool. Each first reads the process mark
    (see detection), one memory load.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        endpoints.remember_settings(self.vendor, self.settings_dict)
        pools.created(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every subclass, however far below: a project's own mixin
        # (class ProjectMixin(ForkSafeMixin)) and the wrapper made from it
        # (class W(ProjectMixin, Backend)) get what forksafe() gives.
        super().__init_subclass__(**kwargs)
        _refuse_backend_first(cls)
        if not _has_backend(cls):
            return  # A mixin still: the wrapper classes made from it are patched.
        _check_ensure_connection(cls)
        # Django's PostgreSQL pool (5.1 and later), where the backend has one.
        for name in ("close_pool", "pool"):
            _check_method(cls, name)
        if (
            NATIVE is None
            and not _ours(_first_defined(cls.__mro__, "wrap_database_errors"))
            and _first_not_ours(cls.__mro__, "wrap_database_errors") is _DJANGOS_WRAP_DATABASE_ERRORS
        ):
            # Without the C extension, an inherited socket is live until
            # invalidation, and a cursor held across a fork behind Python's
            # back fetches without a checkout: Django's cursors enter this
            # around every fetch and iteration too. (With it, that socket is
            # dead since the fork: a fetch fails, and sends nothing.) A
            # backend's own error wrapper is left as it is.
            checked = cached_property(_CheckedDatabaseErrorWrapper)
            checked.__set_name__(cls, "wrap_database_errors")
            cls.wrap_database_errors = checked  # type: ignore[assignment]
        django_pools = getattr(cls, "_connection_pools", None)
        if isinstance(django_pools, dict):
            pools.watch_django_pools(django_pools)
        pools.adapt(cls)  # Third-party pool libraries.

    @property
    def in_atomic_block(self) -> bool:
        # What atomic() reads first, on entering and on leaving a block.
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        return self._forksafe_in_atomic_block

    @in_atomic_block.setter
    def in_atomic_block(self, value: bool) -> None:
        self._forksafe_in_atomic_block = value

    @property
    def atomic_blocks(self) -> list[Any]:
        # A durable atomic() reads it before in_atomic_block.
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        return self._forksafe_atomic_blocks

    @atomic_blocks.setter
    def atomic_blocks(self, blocks: list[Any]) -> None:
        self._forksafe_atomic_blocks = blocks

    def validate_no_broken_transaction(self) -> None:
        # Every execute() of a cursor, one held across the fork included.
        # With the C extension, its own (installed below) does the same.
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()
        if self.needs_rollback:
            _raise_broken_transaction(self)

    def connect(self) -> None:
        registry.invalidate_if_forked()
        previous = self.connection
        super().connect()
        if previous is not None:  # Replaced without close(): left to the GC, as by Django.
            registry.untrack(previous)

    def set_autocommit(self, *args: Any, **kwargs: Any) -> None:
        # Atomic blocks start here; it talks to the server once connected.
        registry.invalidate_if_forked()
        super().set_autocommit(*args, **kwargs)

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        if not self._forksafe_shares_nothing_with_children():
            # Its socket's identity first: from the moment it is tracked, a
            # child forked by another thread tells by it whether fork()
            # silenced the socket (see silencing.one_by_one).
            silencing.remember_socket(connection)
            registry.track(self, connection)
            endpoints.remember_peer(connection, self.vendor, self.settings_dict)
            if self.vendor == "sqlite":
                refusal = sqlite.guard_new_connection(connection, str(self.settings_dict["NAME"]))
                if refusal is not None:
                    sqlite.refuse_writes_clearly(self, refusal)
        pool = getattr(self, "pool", None)  # Django's PostgreSQL connection pool.
        if pool is not None:
            pools.opened_django_pool(pool)
        return connection

    def is_usable(self) -> bool:
        # The CONN_HEALTH_CHECKS ping, and close_if_unusable_or_obsolete()'s.
        registry.invalidate_if_forked()
        if self.connection is None:  # It was inherited and is now forgotten.
            return False
        return super().is_usable()

    def _commit(self) -> None:
        registry.invalidate_if_forked()
        super()._commit()  # type: ignore[misc]  # Not in django-stubs.

    def _rollback(self) -> None:
        registry.invalidate_if_forked()
        super()._rollback()  # type: ignore[misc]  # Not in django-stubs.

    def _close(self) -> None:
        registry.invalidate_if_forked()
        connection = self.connection
        if connection is None:  # It was inherited and is now forgotten.
            return
        # First: a pool may hand the connection to another thread, which
        # records it again, the moment Django gives it back.
        registry.untrack(connection)
        super()._close()  # type: ignore[misc]  # Not in django-stubs.

    def close_if_unusable_or_obsolete(self) -> None:
        # Before Django's get_autocommit() would open a new connection to
        # replace one it has just found inherited.
        registry.invalidate_if_forked()
        super().close_if_unusable_or_obsolete()

    def _forksafe_shares_nothing_with_children(self) -> bool:
        # An in-memory SQLite database has no socket or file to share: a child
        # keeps using its private copy, as Django's parallel test runner does.
        is_in_memory_db = getattr(self, "is_in_memory_db", None)
        return callable(is_in_memory_db) and bool(is_in_memory_db())

    def _forksafe_forget_connection(self) -> None:
        """
        Drop the inherited connection without a round trip, and leave the
        parent's transaction behind: the child starts outside any atomic
        block, in autocommit once it reconnects, with no on_commit callbacks
        of its parent.
        """
        # First, so that a signal handler that closes the connection while
        # this runs finds nothing to close. With closed_in_transaction,
        # leaving an inherited block neither queries nor reconnects, and
        # Django's own exit path resets it; connect() clears it too.
        closed_in_transaction = self._forksafe_in_atomic_block
        self.connection = None
        self.closed_in_transaction = closed_in_transaction
        self._forksafe_in_atomic_block = False
        self.savepoint_ids = []
        self._forksafe_atomic_blocks = []
        self.commit_on_exit = True
        self.needs_rollback = False
        self.run_on_commit = []
        self.run_commit_hooks_on_set_autocommit_on = False
        self.autocommit = False  # As before the first connect().
        self.errors_occurred = False
        self.health_check_done = False


def _raise_broken_transaction(wrapper: ForkSafeMixin) -> None:
    super(ForkSafeMixin, wrapper).validate_no_broken_transaction()


def _connect_through_django(wrapper: Any) -> None:
    """Django's ensure_connection() (whose body is `if self.connection is
    None: <connect>`; tests/test_django_internals.py pins it), for the
    written-out check below, once it has found no connection. Looked up
    through super() when it runs, so that a patch of
    BaseDatabaseWrapper.ensure_connection applies, as to Django's wrappers:
    SimpleTestCase's (a function), or a test's mock (no descriptor: called
    unbound, as super() returns it). A patch that calls back the method it
    replaced, taken from the connection before patching, reaches the check
    again: that call connects, as Django's own would have (its test_utils
    does this). Only Django's follows ForkSafeMixin where this is used (the
    check is written out only then), so super() reaches Django's."""
    if wrapper.__dict__.get("_forksafe_connecting"):
        _DJANGOS_ENSURE_CONNECTION(wrapper)
        return
    wrapper._forksafe_connecting = True
    try:
        super(ForkSafeMixin, wrapper).ensure_connection()
    finally:
        wrapper._forksafe_connecting = False


# With the C extension, the two checks on every query's path are its own
# methods (see _native.c): the mark read in C, the rest as above.
_NATIVE_ENSURE_CONNECTION: Any = None
if NATIVE is not None and PROCESS_MARK is NATIVE.PROCESS_MARK:
    _NATIVE_ENSURE_CONNECTION, _native_validate = NATIVE.query_path_methods(
        BaseDatabaseWrapper, registry.invalidate_if_forked, _connect_through_django, _raise_broken_transaction
    )
    setattr(ForkSafeMixin, "validate_no_broken_transaction", _native_validate)  # noqa: B010


class _CheckedDatabaseErrorWrapper(DatabaseErrorWrapper):
    """Django's error wrapper, which its cursors enter around every execute,
    fetch (fetchone, fetchmany, fetchall) and iteration, with the process
    mark read first: a cursor held across a fork behind Python's back (a
    server-side one, part way through QuerySet.iterator()) fetches nothing
    more on the parent's session."""

    def __enter__(self) -> None:
        # Django's does nothing (tests/test_django_internals.py pins it), and
        # calling it would cost every query a frame more.
        if not PROCESS_MARK[0]:
            registry.invalidate_if_forked()


SUPPORTED_FORMS = (
    "forksafe(Backend), class W(ForkSafeMixin, Backend) or class W(ProjectMixin, Backend) "
    "with class ProjectMixin(ForkSafeMixin), Backend being the backend's DatabaseWrapper"
)


def _refuse_backend_first(cls: type) -> None:
    """A backend's wrapper before the mixin in the MRO would run its methods
    before our checks, and skip ours where it does not call super()."""
    mro = cls.__mro__
    ahead = [klass for klass in mro[: mro.index(ForkSafeMixin)] if not issubclass(klass, ForkSafeMixin)]
    backends = [klass for klass in ahead if issubclass(klass, BaseDatabaseWrapper)]
    if backends:
        raise TypeError(
            f"{cls.__qualname__} puts {backends[0].__module__}.{backends[0].__qualname__} before "
            f"ForkSafeMixin in its MRO: the mixin must come first. Use {SUPPORTED_FORMS}."
        )


def _has_backend(cls: type) -> bool:
    """Whether a backend's DatabaseWrapper follows the mixin in cls's MRO."""
    mro = cls.__mro__
    return any(
        issubclass(klass, BaseDatabaseWrapper) and klass is not BaseDatabaseWrapper
        for klass in mro[mro.index(ForkSafeMixin) + 1 :]
    )


def _ours(attribute: Any) -> bool:
    """Whether a class attribute is one of the checked ones this module
    installs in front of what a class after it defines (not one that took
    the place of a class's own definition)."""
    if isinstance(attribute, property):
        attribute = attribute.fget
    if isinstance(attribute, cached_property):
        return attribute.func is _CheckedDatabaseErrorWrapper
    return getattr(attribute, "_forksafe_checks", None) is not None


def _inherited(cls: type, name: str, target: Any) -> bool:
    """Whether cls inherits, first, a checked `name` of ours: around
    `target`, or `target` itself in place of a class's own."""
    attribute = _first_defined(cls.__mro__[1:], name)
    if isinstance(attribute, property):
        attribute = attribute.fget
    if isinstance(target, property):
        target = target.fget
    return getattr(attribute, "_forksafe_checks", None) is target or (
        attribute is target and getattr(attribute, "_forksafe_own", False) is True
    )


def _first_defined(classes: tuple[type, ...], name: str) -> Any:
    for klass in classes:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def _first_not_ours(classes: tuple[type, ...], name: str) -> Any:
    """`name` as the first of `classes` defines it (not bound), passing over
    the checked ones installed here on other fork-safe classes: None if none."""
    for klass in classes:
        attribute = vars(klass).get(name)
        if attribute is not None and not _ours(attribute):
            return attribute
    return None


def _ours_before(cls: type, name: str, target: Any) -> bool:
    """Whether one of ours comes before `target` after cls in its MRO."""
    for klass in cls.__mro__[1:]:
        attribute = vars(klass).get(name)
        if attribute is target:
            return False
        if attribute is not None and _ours(attribute):
            return True
    return False


def _installed(function: Callable[..., Any], name: str, target: Any, own: bool = False) -> Callable[..., Any]:
    """`function`, the checked `name` around `target`: a class's own
    definition it replaces (`own`), or what a class after it defines."""
    function.__name__ = function.__qualname__ = name
    function.__doc__ = getattr(target, "__doc__", None)
    if own:
        function._forksafe_own = True  # type: ignore[attr-defined]
    else:
        function._forksafe_checks = target  # type: ignore[attr-defined]
    return function


def _check_ensure_connection(cls: type[Any]) -> None:
    """ensure_connection(), checking the process mark first: one memory load
    and one branch in a process that did not fork. Every cursor comes
    through here (Django's cursor() and chunked_cursor() call _cursor(),
    which calls it first), and so does get_autocommit()."""
    own = vars(cls).get("ensure_connection")
    target = own if own is not None else _first_not_ours(cls.__mro__[1:], "ensure_connection")
    if own is None and _inherited(cls, "ensure_connection", target):
        return  # A fork-safe base class's does it already.
    if own is None and target is BaseDatabaseWrapper.ensure_connection:
        # Django's body written out rather than called through super(), which
        # would add a frame to every query; the connecting part is Django's, through super() (see
        # _connect_through_django). With the C extension, its own.
        if _NATIVE_ENSURE_CONNECTION is not None:
            ensure_connection = async_unsafe(_NATIVE_ENSURE_CONNECTION)
        else:

            @async_unsafe
            def ensure_connection(self: Any) -> None:
                if not PROCESS_MARK[0]:
                    registry.invalidate_if_forked()
                if self.connection is None:
                    _connect_through_django(self)

        setattr(cls, "ensure_connection", _installed(ensure_connection, "ensure_connection", target))  # noqa: B010
        return

    # Around a backend's own, called whether connected or not: through
    # super() when it runs, as before (a patch of it applies), unless a
    # checked one installed on a base class comes first; the class's own
    # (which this replaces) directly.
    if own is None and not _ours_before(cls, "ensure_connection", target):

        def checked_ensure_connection(self: Any) -> None:
            if not PROCESS_MARK[0]:
                registry.invalidate_if_forked()
            super(cls, self).ensure_connection()

    else:

        def checked_ensure_connection(self: Any) -> None:
            if not PROCESS_MARK[0]:
                registry.invalidate_if_forked()
            target(self)

    checked = _installed(checked_ensure_connection, "ensure_connection", target, own=own is not None)
    setattr(cls, "ensure_connection", checked)  # noqa: B010


def _check_method(cls: type, name: str) -> None:
    """`name` (a method, or a property's getter) after the check, where cls
    or a class after it defines one."""
    own = vars(cls).get(name)
    attribute = own if own is not None else _first_not_ours(cls.__mro__[1:], name)
    is_property = isinstance(attribute, property)
    function = attribute.fget if is_property else attribute
    if not callable(function) or (own is None and _inherited(cls, name, function)):
        return

    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        registry.invalidate_if_forked()
        return function(self, *args, **kwargs)

    installed = _installed(checked, name, function, own=own is not None)
    setattr(cls, name, property(installed) if is_property else installed)


def forksafe(wrapper_class: WrapperClass) -> WrapperClass:
    """
    Return a fork-safe subclass of a backend's DatabaseWrapper class.

    A third-party backend becomes fork-safe with a base.py of its own::

        from some_backend import base
        from django_forksafe import forksafe
        DatabaseWrapper = forksafe(base.DatabaseWrapper)
    """
    if not (isinstance(wrapper_class, type) and issubclass(wrapper_class, BaseDatabaseWrapper)):
        raise TypeError(
            "forksafe() takes a database wrapper class, a subclass of "
            "django.db.backends.base.base.BaseDatabaseWrapper such as a "
            f"backend's base.DatabaseWrapper; got {wrapper_class!r} "
            f"(of type {type(wrapper_class).__qualname__})."
        )
    return fork_safe_subclass(wrapper_class, ForkSafeMixin, sys._getframe(1).f_globals.get("__name__", __name__))


def _invalidate_if_forked(**kwargs: Any) -> None:
    registry.invalidate_if_forked()


request_started.connect(_invalidate_if_forked, dispatch_uid="django_forksafe.invalidate_if_forked")
