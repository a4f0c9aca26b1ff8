"""
Third-party backends and drivers, each as is (the control) and made
fork-safe by forksafe() in the README's three-line base.py, one package
beside this file for each. PyMySQL is a driver for Django's own MySQL
backend (ours, made fork-safe), installed as MySQLdb first, as its users do.

The hazard scenarios take them as ENGINE names (see tests.dbconfig.ENGINES):
``pymysql`` is the backend as is, ``pymysql-forksafe`` the fork-safe one.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Backend:
    vendor: str
    engine: str  # Its own ENGINE: the control.
    forksafe_engine: str
    requires: tuple[str, ...]  # Modules, from the test extra.
    entry: dict[str, Any] = field(default_factory=dict)  # More for its DATABASES entry.
    pool: str | None = None  # The pool library it keeps connections in.
    install_as_mysqldb: bool = False  # PyMySQL, before Django's MySQL backend loads.
    driver_class: str | None = None  # The raw connection's class, to show the driver in use.


def _postgresql_driver() -> str:
    """The environment's PostgreSQL driver: psycopg 3 if installed (Django
    prefers it), else psycopg2 (tox's psycopg2 factor)."""
    return "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"


BACKENDS = {
    "pymysql": Backend(
        "mysql",
        "django.db.backends.mysql",
        "django_forksafe.backends.mysql",
        ("pymysql",),
        install_as_mysqldb=True,
        driver_class="pymysql.connections.Connection",
    ),
    "connector_c": Backend(
        "mysql",
        "mysql.connector.django",
        "tests.backends.mysql_connector",
        ("mysql.connector", "_mysql_connector"),
        {"OPTIONS": {"use_pure": False}},
        driver_class="mysql.connector.connection_cext.CMySQLConnection",
    ),
    "connector_pure": Backend(
        "mysql",
        "mysql.connector.django",
        "tests.backends.mysql_connector",
        ("mysql.connector",),
        {"OPTIONS": {"use_pure": True}},
        driver_class="mysql.connector.connection.MySQLConnection",
    ),
    "prometheus_mysql": Backend(
        "mysql", "django_prometheus.db.backends.mysql", "tests.backends.prometheus_mysql", ("django_prometheus",)
    ),
    "prometheus_postgresql": Backend(
        "postgresql",
        "django_prometheus.db.backends.postgresql",
        "tests.backends.prometheus_postgresql",
        ("django_prometheus",),
    ),
    "connpool_mysql": Backend(
        "mysql",
        "dj_db_conn_pool.backends.mysql",
        "tests.backends.connpool_mysql",
        ("dj_db_conn_pool",),
        {"POOL_OPTIONS": {"POOL_SIZE": 3, "MAX_OVERFLOW": 0}},
        pool="connpool",
    ),
    "connpool_postgresql": Backend(
        "postgresql",
        "dj_db_conn_pool.backends.postgresql",
        "tests.backends.connpool_postgresql",
        ("dj_db_conn_pool",),
        {"POOL_OPTIONS": {"POOL_SIZE": 3, "MAX_OVERFLOW": 0}},
        pool="connpool",
    ),
    **{
        f"geventpool_{driver}": Backend(
            "postgresql",
            f"django_db_geventpool.backends.postgresql_{driver}",
            f"tests.backends.geventpool_{driver}",
            ("django_db_geventpool", "gevent", module),
            {"OPTIONS": {"MAX_CONNS": 3}},
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
