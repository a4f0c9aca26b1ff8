"""Where the test servers are: env vars FORKSAFE_MYSQL_* / FORKSAFE_PG_*, FORKSAFE_REDIS_PORT."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
from typing import Any

from tests.backends import BACKENDS, backend_of

SERVER_VENDORS = ("mysql", "postgresql")
VENDORS = (*SERVER_VENDORS, "sqlite3")

_PREFIX = {"mysql": "FORKSAFE_MYSQL_", "postgresql": "FORKSAFE_PG_"}


def test_database() -> str:
    """The database the suite works in, on both servers: FORKSAFE_TEST_DATABASE
    (tox gives each environment its own), else "test"; with pytest-xdist, one
    for each worker. Suites run at once never count each other's sessions."""
    name = os.environ.get("FORKSAFE_TEST_DATABASE") or "test"
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        name = f"{name}_{worker}"
    return re.sub(r"\W", "_", name).lower()[:60]


# The role and password tests/machine/setup.sh creates (FORKSAFE_* override).
_DEFAULTS = {
    "mysql": {"HOST": "127.0.0.1", "PORT": "3306", "USER": "forksafe", "PASSWORD": "forksafe"},
    "postgresql": {"HOST": "127.0.0.1", "PORT": "5432", "USER": "forksafe", "PASSWORD": "forksafe"},
}
# Redis (Celery's, RQ's and Huey's broker, and the Redis cache): its port.
REDIS_PORT = int(os.environ.get("FORKSAFE_REDIS_PORT", "6379"))


def redis_url(number: int) -> str:
    """The URL of one of Redis's numbered databases (one per use)."""
    return f"redis://127.0.0.1:{REDIS_PORT}/{number}"


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
        for key, default in {**_DEFAULTS[vendor], "NAME": test_database()}.items()
    }


def create_test_database(vendor: str) -> None:
    """Create the vendor's test database if the server lacks it (with the
    server's client program, installed by tests/machine/setup.sh)."""
    config = server(vendor)
    name = config["NAME"]
    client = "mariadb" if vendor == "mysql" else "psql"
    if shutil.which(client) is None:
        raise RuntimeError(
            f"creating the test database {name!r} on {vendor} needs the {client} client "
            "(make machine installs it); or create the database yourself"
        )
    if vendor == "mysql":
        # MariaDB 11.4's client asks for TLS by default; setup.sh's server offers none.
        plaintext = [] if "ssl" in options(vendor) else ["--skip-ssl"]
        command = [client, *plaintext, "-h", config["HOST"], "-P", config["PORT"], "-u", config["USER"],
                   "-e", f"CREATE DATABASE IF NOT EXISTS `{name}`"]
        env = {**os.environ, "MYSQL_PWD": config["PASSWORD"]}
    else:
        command = [client, "-h", config["HOST"], "-p", config["PORT"], "-U", config["USER"], "-d", "postgres",
                   "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"]
        env = {**os.environ, "PGPASSWORD": config["PASSWORD"]}
        if subprocess.run(command, env=env, capture_output=True, text=True).stdout.strip() == "1":
            return
        command[-2:] = ["-c", f'CREATE DATABASE "{name}"']
    process = subprocess.run(command, env=env, capture_output=True, text=True)
    if process.returncode != 0 and "already exists" not in process.stderr:
        raise RuntimeError(f"could not create the test database {name!r} on {vendor}: {process.stderr.strip()}")


# Each vendor's drivers (any one will do) and how to get them.
DRIVERS = {
    "mysql": (("MySQLdb",), "pip install mysqlclient (it builds with a C compiler, pkg-config and libmariadb-dev)"),
    "postgresql": (("psycopg", "psycopg2"), "pip install 'psycopg[binary]'"),
}


def unreachable_reason(vendor: str) -> str | None:
    """Why the vendor's server cannot be used (not answering, or no driver
    for it installed here), or None."""
    if vendor == "sqlite3":
        return None
    modules, remedy = DRIVERS[vendor]
    if not any(importlib.util.find_spec(module) for module in modules):
        return f"no {vendor} driver installed ({' or '.join(modules)}): {remedy}"
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
    # Django's PostgreSQL backend made fork-safe through a project's mixin of ForkSafeMixin.
    "projectmixin-forksafe": "tests.backends.project_mixin",
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
