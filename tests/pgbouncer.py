"""A PgBouncer in transaction pooling mode, in front of the test PostgreSQL,
started from scratch on a free loopback port (as the postgres user: it
refuses to run as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests import dbconfig
from tests.programs import free_port
from tests.tls import Unavailable, terminate, wait_for_port


@contextmanager
def pgbouncer() -> Iterator[dict[str, str]]:
    """FORKSAFE_PG_* settings that go through PgBouncer."""
    binary = shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if binary is None:
        raise Unavailable("pgbouncer is not installed")
    server = dbconfig.server("postgresql")
    directory = Path(tempfile.mkdtemp(prefix="forksafe-pgbouncer-"))
    directory.chmod(0o755)
    port, log = free_port(), directory / "pgbouncer.log"
    (directory / "users.txt").write_text(f'"{server["USER"]}" "{server["PASSWORD"]}"\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{server['NAME']} = host={server['HOST']} port={server['PORT']} dbname={server['NAME']}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        f"admin_users = {server['USER']}\npool_mode = transaction\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {log}\npidfile = {directory / 'pgbouncer.pid'}\n"
    )
    log.touch()
    command = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise Unavailable("pgbouncer refuses to run as root, and runuser is missing")
        shutil.chown(directory, "postgres")
        shutil.chown(log, "postgres")
        command = ["runuser", "-u", "postgres", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        yield {"FORKSAFE_PG_PORT": str(port), "FORKSAFE_PGBOUNCER_PORT": str(port)}
    finally:
        terminate(process)
        shutil.rmtree(directory, ignore_errors=True)


def client_ports(port: int) -> set[int]:
    """Local ports of the clients PgBouncer holds (from its admin console)."""
    server = dbconfig.server("postgresql")
    output = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", server["USER"], "-A", "-F", "|",
         "-c", "SHOW CLIENTS", "pgbouncer"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    # By the header's names: PgBouncer 1.26 put a column before "port".
    header, *rows = output.splitlines()
    columns = header.split("|")
    database, client_port = columns.index("database"), columns.index("port")
    ports = set()
    for line in rows:
        fields = line.split("|")
        if len(fields) == len(columns) and fields[database] != "pgbouncer":
            ports.add(int(fields[client_port]))
    return ports
