"""
The byte-level test's harness (tests/test_wire.py, tests/test_tls.py):
tcpdump on the loopback around a parent, run as

    python -m tests.wire VENDOR ENGINE FORKS

It opens sessions every way a process holds them: Django's connection, a
cursor held open, a driver connection Django never saw and, on
PostgreSQL, Django's pool. It prints their client ports (a JSON line) and
waits for "go" on stdin; then, quiescent, forks a child each way in FORKS
(os.fork, libc, multiprocessing), one after the other. Each child uses,
closes and drops everything it inherited, and exits (by interpreter
finalisation, by multiprocessing's end, or by os._exit). The parent prints
"done", waits for "check", and prints (a JSON line) whether each of its
sessions is still its own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import django
from django.conf import settings

from django_forksafe.hazards import SESSION_SQL, libc_fork
from tests import IMPORT_PATH, dbconfig
from tests.hazards.common import Monitor

EVERY_FORK = "os.fork,libc,multiprocessing"
FORKS: dict[str, Callable[[], int]] = {"os.fork": os.fork, "libc": libc_fork}
POOL_SIZE = 2


def django_pool(vendor: str) -> bool:
    """Whether Django's pool is there to test: PostgreSQL through psycopg 3."""
    if vendor != "postgresql":
        return False
    try:
        import psycopg_pool  # noqa: F401
    except ImportError:  # psycopg2 (tox's psycopg2 environment).
        return False
    return True


def client_ports(vendor: str) -> list[int]:
    """The local ports of this process's sockets to the vendor's server."""
    server = dbconfig.server(vendor)
    peer = (socket.gethostbyname(server["HOST"]), int(server["PORT"]))
    ports = []
    for name in os.listdir("/proc/self/fd"):
        try:
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.family == socket.AF_INET and sock.getpeername() == peer:
                    ports.append(sock.getsockname()[1])
        except OSError:
            continue  # Not a socket, or not connected.
    return sorted(ports)


def attempt(action: Callable[[], object]) -> None:
    """A child's use of what it inherited may fail (a silenced socket): it
    must never reach the parent's session, which is what is watched."""
    try:
        action()
    except Exception:
        pass


def select_one(alias: str) -> None:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


def child_work(held: Any, raw: Monitor, vendor: str, python_fork: bool) -> None:
    from django.db import connections

    # What it inherited first, before any Django checkout.
    attempt(lambda: raw.query("SELECT 1"))  # Outside Django: only fork() itself can stop it.
    attempt(lambda: held.execute("SELECT 1"))
    attempt(raw.conn.close)
    attempt(lambda: select_one("default"))  # Its own session (with our ENGINE).
    if django_pool(vendor):
        attempt(lambda: select_one("pooled"))
        attempt(connections["pooled"].close)
        if python_fork:  # A libc child's inherited pool threads were never told they are gone.
            attempt(connections["pooled"].close_pool)  # type: ignore[attr-defined]
    attempt(held.close)
    attempt(connections.close_all)


def fork_and_wait(how: str, held: Any, raw: Monitor, vendor: str) -> None:
    if how == "multiprocessing":
        process = multiprocessing.get_context("fork").Process(target=child_work, args=(held, raw, vendor, True))
        process.start()
        process.join()
        return
    pid = FORKS[how]()
    if pid == 0:
        child_work(held, raw, vendor, how == "os.fork")
        if how == "os.fork":
            sys.exit(0)  # Interpreter finalisation: finalisers and garbage collection.
        os._exit(0)
    os.waitpid(pid, 0)


def pooled_sessions(vendor: str) -> list[int]:
    """The sessions in Django's pool, every one checked out at once."""
    from django.db import connections

    pool = connections["pooled"].pool  # type: ignore[attr-defined]
    checked_out = [pool.getconn() for _ in range(POOL_SIZE)]
    try:
        return sorted(conn.execute(SESSION_SQL[vendor]).fetchone()[0] for conn in checked_out)
    finally:
        for conn in checked_out:
            pool.putconn(conn)


def sessions_of(held: Any, raw: Monitor, vendor: str) -> dict[str, Any]:
    """The session behind each of the parent's handles, or the error it raises."""

    def held_cursors_session() -> Any:
        held.execute(SESSION_SQL[vendor])
        return held.fetchone()[0]

    sessions: dict[str, Any] = {}
    for name, session in (
        ("held_cursor", held_cursors_session),
        ("raw", lambda: raw.query(SESSION_SQL[vendor])[0][0]),
        ("pooled", lambda: pooled_sessions(vendor) if django_pool(vendor) else None),
    ):
        try:
            sessions[name] = session()
        except Exception as exc:
            sessions[name] = f"{type(exc).__name__}: {exc}"
    return sessions


def main(vendor: str, engine: str, forks: list[str]) -> None:
    databases = {"default": dbconfig.database(vendor, engine)}
    if django_pool(vendor):
        options = {"pool": {"min_size": POOL_SIZE, "max_size": POOL_SIZE, "timeout": 10}}
        databases["pooled"] = dbconfig.database(vendor, engine, OPTIONS=options)
    settings.configure(DATABASES=databases, USE_TZ=True)
    django.setup()
    from django.db import connections

    if django_pool(vendor):  # Opened through Django, then every pooled session idle.
        select_one("pooled")
        connections["pooled"].close()
        connections["pooled"].pool.wait()  # type: ignore[attr-defined]
    held = connections["default"].cursor()
    raw = Monitor(vendor)
    before = sessions_of(held, raw, vendor)
    print(json.dumps(client_ports(vendor)), flush=True)
    assert sys.stdin.readline() == "go\n"
    for how in forks:
        fork_and_wait(how, held, raw, vendor)
    print("done", flush=True)
    assert sys.stdin.readline() == "check\n"
    print(json.dumps({"before": before, "after": sessions_of(held, raw, vendor)}), flush=True)


@contextmanager
def capture(ports: list[int], server_port: int) -> Iterator[list[str]]:
    """tcpdump's lines for the packets of the connections from `ports` to
    `server_port` on the loopback, complete when the block ends: a marker
    datagram sent last is seen last. Both ends: Linux gives a local port in
    use to a connection to another destination too (another client's, of
    another server on this machine)."""
    marker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    marker.bind(("127.0.0.1", 0))
    marker_port = marker.getsockname()[1]
    watched = " or ".join(f"(tcp port {port} and tcp port {server_port})" for port in ports)
    process = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-nn", "-l", "-tt", "-Q", "inout", f"({watched}) or udp dst port {marker_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None and process.stdout is not None
        said: list[str] = []
        while not said or "listening on" not in said[-1]:  # Capturing from then on.
            said.append(process.stderr.readline())
            assert said[-1], "".join(said)  # tcpdump ended.
        yield lines
        marker.sendto(b"marker", ("127.0.0.1", marker_port))
        for line in process.stdout:
            if f".{marker_port}: UDP" in line:
                break
            lines.append(line.rstrip())
    finally:
        process.terminate()
        process.communicate(timeout=30)
        marker.close()


def carries_something(line: str) -> bool:
    """A packet with payload, or a FIN or RST (an end of the session)."""
    flags = line.split("Flags [", 1)[1].split("]", 1)[0] if "Flags [" in line else ""
    length = line.rsplit("length ", 1)[-1]
    return ("F" in flags or "R" in flags) or (length.isdigit() and int(length) > 0)


def children_on_the_wire(vendor: str, engine: str, forks: str = EVERY_FORK, **env: str) -> dict[str, Any]:
    """Run tests.wire's parent: the packets on its connections while its
    children lived, and its sessions before and after."""
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.wire", vendor, engine, forks],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=IMPORT_PATH, env={**os.environ, **env},
    )
    assert parent.stdin is not None and parent.stdout is not None
    try:
        ports = json.loads(parent.stdout.readline() or "null")
        assert ports, parent.communicate(timeout=60)[1][-3000:]
        with capture(ports, int(dbconfig.server(vendor)["PORT"])) as packets:
            parent.stdin.write("go\n")
            parent.stdin.flush()
            done = parent.stdout.readline()
            assert done == "done\n", done + parent.communicate(timeout=60)[1][-3000:]
        parent.stdin.write("check\n")
        parent.stdin.flush()
        sessions = json.loads(parent.stdout.readline() or "null")
        assert sessions, parent.communicate(timeout=60)[1][-3000:]
    finally:
        parent.kill()
        parent.communicate(timeout=60)
    return {"ports": ports, "packets": [line for line in packets if carries_something(line)], **sessions}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
