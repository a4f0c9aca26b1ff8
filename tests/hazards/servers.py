"""What sits between Django and the server: GIS, PgBouncer, TLS."""

from __future__ import annotations

import os

from django_forksafe.hazards import own_session, run_child
from tests.hazards.common import Result, parent_of, setup

SPATIAL_SQL = {
    "mysql": "SELECT ST_AsText(ST_Buffer(ST_GeomFromText('POINT(1 2)'), 0))",
    "postgresql": "SELECT ST_AsText(ST_SetSRID(ST_MakePoint(1, 2), 4326))",
    "sqlite": "SELECT AsText(MakePoint(1, 2))",
}


def spatial_query() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(SPATIAL_SQL[connection.vendor])
        return str(cursor.fetchone()[0])


def gis(vendor: str, engine: str) -> Result:
    """A GIS ENGINE: the child closes, then runs spatial SQL on a session of
    its own; the parent keeps its session, spatial functions and all."""
    monitor = setup(vendor, engine)
    from django.db import connection

    if vendor == "postgresql":
        connection.prepare_database()  # CREATE EXTENSION IF NOT EXISTS postgis
    parent = parent_of(monitor)

    def work() -> Result:
        connection.close()
        session = own_session()
        return {"child_spatial": spatial_query(), **session}

    result = {**run_child(work), **parent.check(), "parent_session": parent.session_id}
    if result["parent_error"] is None:
        result["parent_spatial"] = spatial_query()
    return result


def through_pgbouncer(vendor: str, engine: str) -> Result:
    """Through PgBouncer (transaction pooling), what the parent must keep is
    its client connection to PgBouncer, as PgBouncer's admin console lists it."""
    import socket

    from tests.pgbouncer import client_ports

    setup("postgresql", engine)
    from django.db import connection

    bouncer = int(os.environ["FORKSAFE_PGBOUNCER_PORT"])

    def local_port() -> int:
        with socket.socket(fileno=os.dup(connection.connection.fileno())) as sock:
            return int(sock.getsockname()[1])

    connection.ensure_connection()
    raw, parent_port = connection.connection, local_port()

    def work() -> Result:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"child_port": local_port()}

    result = run_child(work)
    result["parent_port_listed"] = parent_port in client_ports(bouncer)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 42")
            result["parent_answer"] = cursor.fetchone()[0]
        result["parent_error"] = None
    except Exception as exc:
        result["parent_error"] = f"{type(exc).__name__}: {exc}"
    result["parent_same_raw"] = connection.connection is raw
    result["parent_port"] = parent_port
    return result


def tls_in_use(vendor: str, engine: str) -> Result:
    setup(vendor, engine)
    from django.db import connection

    with connection.cursor() as cursor:
        if vendor == "mysql":
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            cipher = cursor.fetchone()[1]
        else:
            cursor.execute("SELECT cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            cipher = cursor.fetchone()[0]
    return {"cipher": cipher}
