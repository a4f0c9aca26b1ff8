"""
ForkSafeMixin in every composition the MRO allows gets what forksafe()
gives: ensure_connection() checked (and a backend's own still called on
every cursor), Django's pool and close_pool() checked, Django's pool dict
watched; a composition that puts the backend before the mixin is refused.
The real forks are in tests/test_hazards.py (the ``projectmixin-forksafe``
ENGINE); here, the classes and a SQLite wrapper in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db.backends.sqlite3 import base as sqlite_base
from django.db.utils import ConnectionHandler

from django_forksafe import ForkSafeMixin, forksafe, pools
from django_forksafe.detection import NATIVE

# A whole settings entry, as Django completes it.
SETTINGS = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}).settings[
    "default"
]
CHECKED = ("ensure_connection", "pool", "close_pool")


class ProjectMixin(ForkSafeMixin):
    """A project's own mixin, as in the README's issue 12."""


class ProjectMixinWithEnsure(ForkSafeMixin):
    """A project's mixin with an ensure_connection() of its own."""

    def ensure_connection(self) -> None:
        super().ensure_connection()


class Unrelated:
    """A mixin that knows nothing of databases."""


def compositions(backend: type) -> dict[str, Callable[[], type]]:
    """Every way to make `backend` fork-safe that the MRO allows."""

    def direct() -> type:
        return type("W", (ForkSafeMixin, backend), {})

    def through_project_mixin() -> type:
        return type("W", (ProjectMixin, backend), {})

    def through_two_project_mixins() -> type:
        second = type("Second", (ProjectMixin,), {})
        return type("W", (second, backend), {})

    def unrelated_mixin_first() -> type:
        return type("W", (Unrelated, ProjectMixin, backend), {})

    def project_mixin_with_ensure() -> type:
        return type("W", (ProjectMixinWithEnsure, backend), {})

    def subclass_of_forksafe() -> type:
        return type("Sub", (forksafe(backend),), {})

    def subclass_of_project_wrapper() -> type:
        return type("Sub", (Unrelated, through_project_mixin()), {})

    return {
        "forksafe": lambda: forksafe(backend),
        "direct": direct,
        "through_project_mixin": through_project_mixin,
        "through_two_project_mixins": through_two_project_mixins,
        "unrelated_mixin_first": unrelated_mixin_first,
        "project_mixin_with_ensure": project_mixin_with_ensure,
        "subclass_of_forksafe": subclass_of_forksafe,
        "subclass_of_project_wrapper": subclass_of_project_wrapper,
    }


def resolved(klass: type, name: str) -> Any:
    """`name` as an instance of `klass` finds it (not bound), a property's getter."""
    for base in klass.__mro__:
        if name in vars(base):
            attribute = vars(base)[name]
            return attribute.fget if isinstance(attribute, property) else attribute
    return None


def is_checked(function: Any) -> bool:
    return getattr(function, "_forksafe_checks", None) is not None or getattr(function, "_forksafe_own", False)


FORMS = list(compositions(sqlite_base.DatabaseWrapper))


class OwnEnsure(sqlite_base.DatabaseWrapper):
    """A backend with an ensure_connection() of its own, counting its calls."""

    calls: list[str] = []  # One list for each subclass made below.

    def ensure_connection(self) -> None:
        self.calls.append(self.alias)
        super().ensure_connection()


@pytest.mark.parametrize("form", FORMS)
def test_a_backends_own_ensure_connection_is_called_on_every_cursor(
    form: str, django_db_blocker: Any, tmp_path: Path
) -> None:
    """Once connected too: a written-out ensure_connection() that skipped it
    would leave the backend's own out (issue 12's ProjectMixin did)."""
    backend: Any = type("Own", (OwnEnsure,), {"calls": []})
    wrapper_class = compositions(backend)[form]()
    assert is_checked(resolved(wrapper_class, "ensure_connection"))
    # A file: Django's close() leaves an in-memory database open.
    wrapper = wrapper_class({**SETTINGS, "NAME": str(tmp_path / "db.sqlite3")}, "composition")
    with django_db_blocker.unblock():  # A database of its own.
        try:
            wrapper.ensure_connection()
            backend.calls.clear()
            for _ in range(3):
                wrapper.cursor().close()
            assert len(backend.calls) == 3
        finally:
            wrapper.close()


@pytest.mark.parametrize("form", ["forksafe", "direct", "through_project_mixin"])
def test_a_patch_of_a_backends_own_ensure_connection_applies(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As under Django's plain ENGINE: the checked one looks the backend's
    up when it runs."""
    backend: Any = type("Own", (OwnEnsure,), {"calls": []})
    wrapper = compositions(backend)[form]()({**SETTINGS}, "composition")
    patched: list[Any] = []

    def ensure_connection(self: Any) -> None:  # A function: bound as a method is.
        patched.append(self)

    monkeypatch.setattr(backend, "ensure_connection", ensure_connection)
    wrapper.ensure_connection()
    assert patched == [wrapper]


@pytest.mark.parametrize("form", FORMS)
def test_every_composition_checks_what_forksafe_checks_on_sqlite(form: str) -> None:
    wrapper_class = compositions(sqlite_base.DatabaseWrapper)[form]()
    assert is_checked(resolved(wrapper_class, "ensure_connection"))
    if NATIVE is None:  # The checked error wrapper, where Django's would be.
        assert type(wrapper_class(dict(SETTINGS), "x").wrap_database_errors).__name__ == "_CheckedDatabaseErrorWrapper"


@pytest.mark.parametrize("form", FORMS)
def test_every_composition_checks_what_forksafe_checks_on_postgresql(form: str) -> None:
    pytest.importorskip("psycopg")
    from django.db.backends.postgresql.base import DatabaseWrapper

    # Watched again by the composition itself (any wrapper class made earlier watched it too).
    pools._django_pool_dicts.pop(id(DatabaseWrapper._connection_pools), None)  # type: ignore[attr-defined]
    wrapper_class = compositions(DatabaseWrapper)[form]()
    for name in CHECKED:
        function = resolved(wrapper_class, name)
        assert is_checked(function), name
        # And around Django's own, whoever is in between.
        target = getattr(function, "_forksafe_checks", None)
        if target is not None and name != "ensure_connection":
            assert target is resolved(DatabaseWrapper, name), name
    assert id(DatabaseWrapper._connection_pools) in pools._django_pool_dicts  # type: ignore[attr-defined]


def test_a_project_mixin_alone_is_left_for_the_wrappers_made_from_it() -> None:
    """No backend follows it: nothing to check, nothing patched on it."""
    assert "ensure_connection" not in vars(ProjectMixin)


@pytest.mark.parametrize(
    "bases",
    [
        (sqlite_base.DatabaseWrapper, ProjectMixin),
        (sqlite_base.DatabaseWrapper, ForkSafeMixin),
        (sqlite_base.DatabaseWrapper, Unrelated, ProjectMixin),
    ],
    ids=["backend_then_project_mixin", "backend_then_mixin", "backend_unrelated_then_project_mixin"],
)
def test_the_backend_before_the_mixin_is_refused_naming_the_supported_forms(bases: tuple[type, ...]) -> None:
    with pytest.raises(TypeError, match=r"the mixin must come first.*forksafe\(Backend\).*class W\(ProjectMixin"):
        type("W", bases, {})


@pytest.mark.parametrize("registered", ["before", "after"])
def test_an_adapter_registered_is_used_for_a_wrapper_built_on_its_library(registered: str) -> None:
    """pools.register_adapter(): for a library whose class is in a fork-safe
    wrapper's MRO, registered before the wrapper class is made or after."""
    library = f"forksafe_test_library_{registered}"
    built_on_library = type("DatabaseWrapper", (sqlite_base.DatabaseWrapper,), {"__module__": f"{library}.base"})

    def forget() -> None:
        pass

    try:
        if registered == "before":
            pools.register_adapter(library, forget)
        wrapper_class = forksafe(built_on_library)
        if registered == "after":
            pools.register_adapter(library, forget)
        assert pools._adapters[library] is forget
        assert wrapper_class  # Kept alive until here: the adapters look at live classes.
    finally:
        pools._adapters.pop(library, None)
        pools._known_adapters.pop(library, None)


@pytest.mark.parametrize("library", ["", "dj_db_conn_pool.core"])
def test_an_adapter_takes_a_top_level_module_name(library: str) -> None:
    with pytest.raises(ValueError, match="top-level module name of a pool library"):
        pools.register_adapter(library, lambda: None)
