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

ENGINES = [
    *(f"{__name__}.{vendor}" for vendor in ("mysql", "postgresql", "sqlite3")),
    *(f"{__name__}.gis.{backend}" for backend in ("mysql", "postgis", "spatialite")),
]


def suggest_engine(engine: str) -> str:
    """The fork-safe ENGINE to use instead of `engine`."""
    package, _, name = engine.rpartition(".")
    ours = {
        "django.db.backends": ("django_forksafe.backends", {"mysql", "postgresql", "sqlite3"}),
        "django.contrib.gis.db.backends": ("django_forksafe.backends.gis", {"mysql", "postgis", "spatialite"}),
    }
    if package in ours and name in ours[package][1]:
        return f"{ours[package][0]}.{name}"
    return f"a base.py with DatabaseWrapper = django_forksafe.forksafe(<{engine}>.base.DatabaseWrapper)"


class _UnknownEngineFinder(importlib.abc.MetaPathFinder):
    # Last on sys.meta_path: asked only about modules no other finder found.
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.rpartition(".")[0] not in (__name__, f"{__name__}.gis"):
            return None
        raise ModuleNotFoundError(
            f"{fullname!r} is not a django-forksafe ENGINE. Available ENGINEs: "
            f"{', '.join(map(repr, ENGINES))}. To make another backend fork-safe, "
            "wrap its DatabaseWrapper with django_forksafe.forksafe() in a base.py "
            "of your own (see the README).",
            name=fullname,
        )


if not any(isinstance(finder, _UnknownEngineFinder) for finder in sys.meta_path):
    sys.meta_path.append(_UnknownEngineFinder())
