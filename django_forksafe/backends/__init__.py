"""
The fork-safe ENGINEs: django_forksafe.backends.<vendor>.

Django reports a missing ENGINE module with a list of its own backends and
"Check the above exception": for an unknown name under this package, the
exception above is a ModuleNotFoundError that lists ours. It is what any
import of a missing module raises, so importlib.util.find_spec() and Django's
module_has_submodule() keep working.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

# Django's packages of backends, each with ours and the backends we wrap.
WRAPPED = {
    "django.db.backends": (__name__, ("mysql", "postgresql", "sqlite3")),
    "django.contrib.gis.db.backends": (f"{__name__}.gis", ("mysql", "postgis", "spatialite")),
}
ENGINES = [f"{package}.{name}" for package, names in WRAPPED.values() for name in names]


def suggest_engine(engine: str) -> str:
    """The fork-safe ENGINE to use instead of `engine`."""
    package, _, name = engine.rpartition(".")
    if package in WRAPPED and name in WRAPPED[package][1]:
        return f"{WRAPPED[package][0]}.{name}"
    return f"a base.py with DatabaseWrapper = django_forksafe.forksafe(<{engine}>.base.DatabaseWrapper)"


def why_not_loaded(error: BaseException) -> str:
    """What Django's error on loading an ENGINE says, where it matters: ours
    alone for an unknown name under this package (Django's own points at
    django.db.backends), else Django's and what caused it."""
    cause = error.__cause__
    if isinstance(cause, ModuleNotFoundError) and (cause.name or "").startswith(f"{__name__}."):
        return str(cause)
    return " ".join(str(part) for part in (error, cause) if part is not None)


class _UnknownEngineFinder(importlib.abc.MetaPathFinder):
    # Last on sys.meta_path: asked only about modules no other finder found.
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package not in (__name__, f"{__name__}.gis"):
            return None
        # Django imports ENGINE + ".base": for the package itself, name that.
        engine = package if name == "base" else fullname
        raise ModuleNotFoundError(
            f"{engine!r} is not a django-forksafe ENGINE. Available ENGINEs: "
            f"{', '.join(map(repr, ENGINES))}. To make another backend fork-safe, "
            "wrap its DatabaseWrapper with django_forksafe.forksafe() in a base.py "
            "of your own (see the README).",
            name=fullname,
        )


if not any(isinstance(finder, _UnknownEngineFinder) for finder in sys.meta_path):
    sys.meta_path.append(_UnknownEngineFinder())
