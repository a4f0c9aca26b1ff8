"""
What every scenario shares: settings for one vendor and ENGINE, a monitor
connection that watches the server side, and the parent and child of
django_forksafe.hazards (the library that forksafe_check uses too).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import django
from django.conf import settings

from django_forksafe.hazards import SESSION_LISTED_SQL, SESSION_SQL, Parent
from tests import dbconfig
from tests.backends import backend_of

Result = dict[str, Any]
Scenario = Callable[[str, str], Result]

# The process the scenario runs in (its children must not clean up after it).
SCENARIO_PID = os.getpid()


class Monitor:
    """A raw driver connection, outside Django, that watches the server."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        config = dbconfig.server(vendor)
        if vendor == "mysql":
            import MySQLdb

            self.conn = MySQLdb.connect(
                host=config["HOST"],
                port=int(config["PORT"]),
                user=config["USER"],
                password=config["PASSWORD"],
                database=config["NAME"],
                autocommit=True,
                **dbconfig.options(vendor),
            )
        else:
            try:
                import psycopg as driver
            except ImportError:  # Django falls back to psycopg2 as well.
                import psycopg2 as driver  # type: ignore[no-redef]

            self.conn = driver.connect(
                host=config["HOST"],
                port=config["PORT"],
                user=config["USER"],
                password=config["PASSWORD"] or None,
                dbname=config["NAME"],
                **dbconfig.options(vendor),
            )
            self.conn.autocommit = True

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def alive(self, session_id: int) -> bool:
        return bool(self.query(SESSION_LISTED_SQL[self.vendor], (session_id,))[0][0])

    def client_ports(self) -> dict[int, int]:
        """The client's TCP port of each session on our test database."""
        if self.vendor == "mysql":
            sql = "SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE DB = %s"
        else:
            sql = "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s"
        rows = self.query(sql, (dbconfig.server(self.vendor)["NAME"],))
        return {int(session): port for session, client in rows if (port := client_port(client)) is not None}

    def sessions(self) -> set[int]:
        """Sessions on our test database, this monitor's own included."""
        if self.vendor == "mysql":
            sql = "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s"
        else:
            sql = "SELECT pid FROM pg_stat_activity WHERE datname = %s"
        return {int(row[0]) for row in self.query(sql, (dbconfig.server(self.vendor)["NAME"],))}

    def session_ended(self, session_id: int, seconds: float) -> bool:
        """Whether the server lets the session go within `seconds`: it ends
        asynchronously after its client's socket is closed."""
        import time

        deadline = time.monotonic() + seconds
        while self.alive(session_id):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # Polling the server, bounded.
        return True

    def new_sessions(self, before: set[int], seconds: float = 20.0) -> set[int]:
        """Sessions opened since `before` that are still there. Sessions end
        asynchronously after a client exits: poll, bounded, until they go."""
        import time

        deadline = time.monotonic() + seconds
        while (new := self.sessions() - before) and time.monotonic() < deadline:
            time.sleep(0.05)
        return new


def raw_session_kept(monitor: Monitor, raw: Monitor, session: int) -> Result:
    """After a child: whether the parent's own driver connection `raw` still
    runs on its `session`, and whether the server still lists that session."""
    observations: Result = {"raw_error": None}
    try:
        observations["raw_same_session"] = raw.query(SESSION_SQL[raw.vendor])[0][0] == session
    except Exception as exc:
        observations["raw_error"] = f"{type(exc).__name__}: {exc}"
    observations["raw_session_on_server"] = monitor.alive(session)
    return observations


# The raw connection classes Django opened here: the driver in use.
DRIVER_CLASSES: set[str] = set()


def client_port(client: object) -> int | None:
    """PostgreSQL's client_port, or the port in MySQL's HOST ("127.0.0.1:40134")."""
    if isinstance(client, int):
        return client if client > 0 else None  # -1: a Unix socket.
    host, _, port = str(client or "").rpartition(":")
    return int(port) if host and port.isdigit() else None


def setup(vendor: str, engine: str, **options: Any) -> Monitor | None:
    backend = backend_of(engine)
    if backend is not None and backend.install_as_mysqldb:
        import pymysql

        pymysql.install_as_MySQLdb()  # The monitor's driver too.
    databases = options.pop("DATABASES", None) or {
        "default": dbconfig.database(
            vendor,
            engine,
            **({"NAME": os.path.join(tempfile.mkdtemp(), "db.sqlite3")} if vendor == "sqlite3" else {}),
        )
    }
    settings.configure(DATABASES=databases, USE_TZ=True, **options)
    django.setup()
    from django.db.backends.signals import connection_created

    def record_driver(connection: Any, **kwargs: Any) -> None:
        raw_class = type(connection.connection)
        DRIVER_CLASSES.add(f"{raw_class.__module__}.{raw_class.__qualname__}")

    connection_created.connect(record_driver, weak=False)
    return Monitor(vendor) if vendor in dbconfig.SERVER_VENDORS else None


def parent_of(monitor: Monitor | None, alias: str = "default") -> Parent:
    """The parent's session, watched on the server side when there is one."""
    return Parent(alias, monitor.alive if monitor is not None else None)


