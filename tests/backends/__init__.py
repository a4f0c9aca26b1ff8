"""
Third-party backends and drivers, each as is (the control) and made
fork-safe by forksafe() in the README's three-line base.py, one package
beside this file for each. PyMySQL is a driver for Django's own MySQL
backend (ours, made fork-safe), installed as MySQLdb first, as its users do.

The hazard scenarios take them as ENGINE names (see tests.dbconfig.ENGINES):
``pymysql`` is the backend as is, ``pymysql-forksafe`` the fork-safe one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Backend:
    vendor: str
    engine: str  # Its own ENGINE: the control.
    forksafe_engine: str  # forksafe() in a three-line base.py.
    requires: tuple[str, ...]  # Modules, from the test extra.
    entry: dict[str, Any] = field(default_factory=dict)  # More for its DATABASES entry.
    pool: Literal["connpool", "geventpool"] | None = None  # The pool library it keeps connections in.
    install_as_mysqldb: bool = False  # PyMySQL, before Django's MySQL backend loads.
    driver_class: str | None = None  # The raw connection's class, to show the driver in use.
    # What the driver does unwrapped, which decides the controls that fail:
    goodbye_when_freed: bool = False  # Its deallocator sends COM_QUIT (mysqlclient, C extensions).
    has_fileno: bool = True  # Else only the socket layer can release its socket.


def _postgresql_driver() -> str:
    """The environment's PostgreSQL driver, chosen as Django chooses it:
    psycopg 3 if it imports, else psycopg2 (tox's psycopg2 factor)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg2"
    return "psycopg"


POOL_OPTIONS = {"POOL_SIZE": 3, "MAX_OVERFLOW": 0}  # tests.hazards.pools.POOL_SIZE connections.

BACKENDS = {
    "pymysql": Backend(
        vendor="mysql",
        engine="django.db.backends.mysql",
        forksafe_engine="django_forksafe.backends.mysql",
        requires=("pymysql",),
        install_as_mysqldb=True,
        driver_class="pymysql.connections.Connection",
        has_fileno=False,
    ),
    "connector_c": Backend(
        vendor="mysql",
        engine="mysql.connector.django",
        forksafe_engine="tests.backends.mysql_connector",
        requires=("mysql.connector", "_mysql_connector"),
        entry={"OPTIONS": {"use_pure": False}},
        driver_class="mysql.connector.connection_cext.CMySQLConnection",
        goodbye_when_freed=True,
        has_fileno=False,
    ),
    "connector_pure": Backend(
        vendor="mysql",
        engine="mysql.connector.django",
        forksafe_engine="tests.backends.mysql_connector",
        requires=("mysql.connector",),
        entry={"OPTIONS": {"use_pure": True}},
        driver_class="mysql.connector.connection.MySQLConnection",
        has_fileno=False,
    ),
    "prometheus_mysql": Backend(
        vendor="mysql",
        engine="django_prometheus.db.backends.mysql",
        forksafe_engine="tests.backends.prometheus_mysql",
        requires=("django_prometheus",),
        goodbye_when_freed=True,
    ),
    "prometheus_postgresql": Backend(
        vendor="postgresql",
        engine="django_prometheus.db.backends.postgresql",
        forksafe_engine="tests.backends.prometheus_postgresql",
        requires=("django_prometheus",),
    ),
    "connpool_mysql": Backend(
        vendor="mysql",
        engine="dj_db_conn_pool.backends.mysql",
        forksafe_engine="tests.backends.connpool_mysql",
        requires=("dj_db_conn_pool",),
        entry={"POOL_OPTIONS": POOL_OPTIONS},
        pool="connpool",
        goodbye_when_freed=True,
    ),
    "connpool_postgresql": Backend(
        vendor="postgresql",
        engine="dj_db_conn_pool.backends.postgresql",
        forksafe_engine="tests.backends.connpool_postgresql",
        requires=("dj_db_conn_pool",),
        entry={"POOL_OPTIONS": POOL_OPTIONS},
        pool="connpool",
    ),
    # django-db-geventpool has a backend for each driver: the environment's.
    **{
        f"geventpool_{driver}": Backend(
            vendor="postgresql",
            engine=f"django_db_geventpool.backends.postgresql_{driver}",
            forksafe_engine=f"tests.backends.geventpool_{driver}",
            requires=("django_db_geventpool", "gevent", module),
            entry={"OPTIONS": {"MAX_CONNS": POOL_OPTIONS["POOL_SIZE"]}},
            pool="geventpool",
            driver_class=driver_class,
        )
        for driver, module, driver_class in (
            ("psycopg3", "psycopg", "psycopg.Connection"),
            ("psycopg2", "psycopg2", "psycopg2.extensions.connection"),
        )
        if module == _postgresql_driver()
    },
}


def backend_of(engine: str) -> Backend | None:
    """The third-party backend an ENGINE name of tests.dbconfig stands for."""
    return BACKENDS.get(engine.removesuffix("-forksafe"))
