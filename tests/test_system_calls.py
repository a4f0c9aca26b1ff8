"""
No system call of ours on the query path, nor on a checkout from Django's
PostgreSQL pool: counted with strace in a process of its own (its main
thread, where Django runs), the forksafe ENGINE against Django's. What a
process does once (imports, connecting, recording the peer of a new raw
connection) cancels out between a long run and a short one.

    python -m tests.test_system_calls VENDOR ENGINE WORK COUNT   (under strace)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from typing import Any

import pytest

from tests import IMPORT_PATH, dbconfig
from tests.utils import require_server, skip_or_fail

# Our code could make these: the getpid() mark, the peer of a socket
# (dup, getsockopt, getsockname, getpeername, close), the descriptor scan.
WATCHED = "getpid,dup,dup3,getsockopt,getsockname,getpeername,close,fstat,fcntl,openat,getdents64,socket"
FEW, MANY = 20, 120


def run(vendor: str, engine: str, work: str, count: int) -> None:
    """The measured process: `count` queries on one connection, or `count`
    requests' worth of checkouts (connect, query, close) from Django's pool."""
    import django
    from django.conf import settings
    from django.db import connection

    extra: dict[str, Any] = {"NAME": os.path.join(tempfile.gettempdir(), "forksafe-syscalls.sqlite3")}
    if vendor != "sqlite3":
        extra = {"OPTIONS": {"pool": {"min_size": 1, "max_size": 1}}} if work == "checkouts" else {}
    settings.configure(DATABASES={"default": dbconfig.database(vendor, engine, **extra)}, USE_TZ=True)
    django.setup()
    for _ in range(count):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if work == "checkouts":
            connection.close()  # Back to the pool, as at the end of a request.
    connection.close()
    if work == "checkouts":
        connection.close_pool()  # type: ignore[attr-defined]


def counted(vendor: str, engine: str, work: str, count: int) -> Counter[str]:
    with tempfile.NamedTemporaryFile(mode="r") as output:
        process = subprocess.run(
            ["strace", "-c", "-U", "name,calls", "-e", f"trace={WATCHED}", "-o", output.name,
             sys.executable, "-m", "tests.test_system_calls", vendor, engine, work, str(count)],
            capture_output=True, text=True, cwd=IMPORT_PATH, timeout=300,
        )
        assert process.returncode == 0, process.stderr[-3000:]
        calls: Counter[str] = Counter()
        for line in output.read().splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].isdigit():
                calls[fields[0]] = int(fields[1])
    return calls


def per_unit(vendor: str, engine: str, work: str) -> Counter[str]:
    """System calls per query or checkout: a long run less a short one."""
    many, few = counted(vendor, engine, work, MANY), counted(vendor, engine, work, FEW)
    many.subtract(few)
    return +many  # Only what grows with the work.


@pytest.fixture
def strace() -> None:
    if shutil.which("strace") is None:
        skip_or_fail("strace is not installed (make test installs it)")


@pytest.mark.usefixtures("strace")
@pytest.mark.parametrize(
    ("vendor", "work"),
    [("sqlite3", "queries"), ("mysql", "queries"), ("postgresql", "queries"), ("postgresql", "checkouts")],
)
def test_no_system_call_of_ours(vendor: str, work: str) -> None:
    require_server(vendor)
    if work == "checkouts":
        pytest.importorskip("psycopg_pool")
    ours, plain = per_unit(vendor, "forksafe", work), per_unit(vendor, "plain", work)
    # One call of ours per query would be MANY - FEW; the interpreter's own
    # occasional calls (a lazy import, a cache file) are a few, on either side.
    assert {name: count for name, count in (ours - plain).items() if count >= (MANY - FEW) // 2} == {}


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
