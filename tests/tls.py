"""
TLS-only servers for the TLS tests, started from scratch in a temporary
directory on a free loopback port: a PostgreSQL cluster (initdb, run as the
postgres user) and a MariaDB instance (mariadb-install-db), both with a
certificate made here with openssl and refusing unencrypted clients.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.programs import free_port


class Unavailable(Exception):
    """What the machine lacks to run a TLS server (the message says)."""


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise Unavailable(f"server exited: {log.read_text()[-2000:]}") from None
            if time.monotonic() > deadline:
                raise Unavailable(f"server did not listen on {port}: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)  # Polling for readiness, bounded by the deadline.


def terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop a server we started, bounded in time."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(*command: str, **kwargs: Any) -> None:
    process = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    if process.returncode:
        raise Unavailable(f"{' '.join(command)}: {process.stderr[-2000:]}")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        raise Unavailable("openssl is not installed")
    cert, key = directory / "server.crt", directory / "server.key"
    run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
    )
    return cert, key


@contextmanager
def postgresql() -> Iterator[dict[str, str]]:
    """FORKSAFE_PG_* settings of a TLS-only PostgreSQL cluster."""
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindir or shutil.which("runuser") is None or os.geteuid() != 0:
        raise Unavailable("needs PostgreSQL's server binaries and root (to run them as postgres)")
    directory = Path(tempfile.mkdtemp(prefix="forksafe-tls-pg-"))
    directory.chmod(0o755)
    data, log, port = directory / "data", directory / "server.log", free_port()
    try:
        cert, key = make_certificate(directory)
        shutil.chown(directory, "postgres")
        for path in (cert, key):
            shutil.chown(path, "postgres")
        run("runuser", "-u", "postgres", "--", f"{bindir[-1]}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
        (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{directory}'\n"
                f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
            )
        run("runuser", "-u", "postgres", "--", f"{bindir[-1]}/pg_ctl", "-D", str(data), "-l", str(log), "-w", "start")
        try:
            createdb = f"{bindir[-1]}/createdb"
            run("runuser", "-u", "postgres", "--", createdb, "-h", str(directory), "-p", str(port), "test")
            yield {
                "FORKSAFE_PG_HOST": "127.0.0.1",
                "FORKSAFE_PG_PORT": str(port),
                "FORKSAFE_PG_NAME": "test",
                # This cluster's own superuser (trust), not the test role.
                "FORKSAFE_PG_USER": "postgres",
                "FORKSAFE_PG_PASSWORD": "",
                "FORKSAFE_PG_OPTIONS": '{"sslmode": "require"}',
            }
        finally:
            subprocess.run(
                ["runuser", "-u", "postgres", "--", f"{bindir[-1]}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True, timeout=60,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def mariadb() -> Iterator[dict[str, str]]:
    """FORKSAFE_MYSQL_* settings of a TLS-only MariaDB instance."""
    install, server = shutil.which("mariadb-install-db"), shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
    if install is None or server is None:
        raise Unavailable("needs MariaDB's server (mariadbd, mariadb-install-db)")
    directory = Path(tempfile.mkdtemp(prefix="forksafe-tls-mariadb-"))
    data, log, port = directory / "data", directory / "server.log", free_port()
    process = None
    try:
        cert, key = make_certificate(directory)
        run(install, "--no-defaults", f"--datadir={data}", "--user=root", "--auth-root-authentication-method=normal",
            "--skip-test-db")
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [server, "--no-defaults", f"--datadir={data}", f"--port={port}", "--bind-address=127.0.0.1",
                 f"--socket={directory / 'mysqld.sock'}", f"--pid-file={directory / 'mysqld.pid'}", "--user=root",
                 f"--ssl-cert={cert}", f"--ssl-key={key}", f"--ssl-ca={cert}", "--require-secure-transport=ON",
                 "--skip-log-bin"],
                stdout=output, stderr=subprocess.STDOUT,
            )
        wait_for_port(port, process, log)
        run("mariadb", f"--socket={directory / 'mysqld.sock'}", "-uroot", "-e", "CREATE DATABASE test")
        yield {
            "FORKSAFE_MYSQL_HOST": "127.0.0.1",
            "FORKSAFE_MYSQL_PORT": str(port),
            "FORKSAFE_MYSQL_NAME": "test",
            # This instance's own root (no password), not the test role.
            "FORKSAFE_MYSQL_USER": "root",
            "FORKSAFE_MYSQL_PASSWORD": "",
            "FORKSAFE_MYSQL_OPTIONS": f'{{"ssl": {{"ca": "{cert}"}}}}',
        }
    finally:
        if process is not None:
            terminate(process)
        shutil.rmtree(directory, ignore_errors=True)
