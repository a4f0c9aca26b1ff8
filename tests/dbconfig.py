"""Where the test servers are: env vars FORKSAFE_MYSQL_* / FORKSAFE_PG_*."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from tests.backends import BACKENDS, backend_of

SERVER_VENDORS = ("mysql", "postgresql")
VENDORS = (*SERVER_VENDORS, "sqlite3")

_PREFIX = {"mysql": "FORKSAFE_MYSQL_", "postgresql": "FORKSAFE_PG_"}
_DEFAULTS = {
    "mysql": {"HOST": "127.0.0.1", "PORT": "3306", "USER": "root", "PASSWORD": "", "NAME": "test"},
    "postgresql": {
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "USER": "postgres",
        "PASSWORD": "",
        "NAME": "test",
    },
}


def options(vendor: str) -> dict[str, Any]:
    """OPTIONS for the vendor's server, as JSON in FORKSAFE_MYSQL_OPTIONS /
    FORKSAFE_PG_OPTIONS (the TLS tests set them)."""
    if vendor not in _PREFIX:
        return {}
    return json.loads(os.environ.get(_PREFIX[vendor] + "OPTIONS", "{}"))  # type: ignore[no-any-return]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server(vendor: str) -> dict[str, str]:
    """HOST, PORT, USER, PASSWORD and NAME of the vendor's test server."""
    return {
        key: os.environ.get(_PREFIX[vendor] + key, default)
        for key, default in _DEFAULTS[vendor].items()
    }


def unreachable_reason(vendor: str) -> str | None:
    """Why the vendor's server cannot be used, or None if it answers."""
    if vendor == "sqlite3":
        return None
    config = server(vendor)
    try:
        with socket.create_connection((config["HOST"], int(config["PORT"])), timeout=2):
            return None
    except OSError as exc:
        return (
            f"{vendor} server not reachable at {config['HOST']}:{config['PORT']} ({exc}); "
            f"set {_PREFIX[vendor]}HOST/PORT/USER/PASSWORD/NAME"
        )


ENGINES = {
    "forksafe": "django_forksafe.backends.{vendor}",
    "plain": "django.db.backends.{vendor}",
    # A third-party PostgreSQL backend, as is and made fork-safe by forksafe().
    "thirdparty": "tests.thirdparty_backend",
    "thirdparty-forksafe": "tests.thirdparty_backend.forksafe",
    # A MySQL connection pool that no adapter of django_forksafe.pools knows.
    "unknown_pool": "tests.backends.unknown_pool",
    "unknown_pool-forksafe": "tests.backends.unknown_pool.forksafe",
    "gis-forksafe": "django_forksafe.backends.gis.{gis}",
    "gis-plain": "django.contrib.gis.db.backends.{gis}",
    # Third-party backends and drivers (tests.backends), as is and fork-safe.
    **{name: backend.engine for name, backend in BACKENDS.items()},
    **{f"{name}-forksafe": backend.forksafe_engine for name, backend in BACKENDS.items()},
}
GIS_BACKENDS = {"mysql": "mysql", "postgresql": "postgis", "sqlite3": "spatialite"}


def is_forksafe(engine: str) -> bool:
    """Whether one of ENGINES is made fork-safe (else it is a control)."""
    return engine == "forksafe" or engine.endswith("-forksafe")


def database(vendor: str, engine: str = "forksafe", **extra: Any) -> dict[str, Any]:
    """A DATABASES entry for the vendor, on one of ENGINES."""
    entry: dict[str, Any] = {"ENGINE": ENGINES[engine].format(vendor=vendor, gis=GIS_BACKENDS[vendor])}
    if vendor != "sqlite3":
        entry.update(server(vendor), OPTIONS=options(vendor))
    backend = backend_of(engine)
    if backend is not None:
        assert backend.vendor == vendor, f"{engine} is a {backend.vendor} backend, not {vendor}"
    for more in (backend.entry if backend else {}), extra:  # OPTIONS merged, the rest replaced.
        entry.update({**more, "OPTIONS": {**entry.get("OPTIONS", {}), **more.get("OPTIONS", {})}})
    return entry
