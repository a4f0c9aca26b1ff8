"""
make demo: run manage.py forksafe_check on testproject/ with Django's plain
ENGINE and with the forksafe ENGINE, side by side: on SQLite always, on
MariaDB and PostgreSQL when they answer (and their drivers are installed);
a database that cannot be shown is skipped with the line that adds it.

    python testproject/demo.py [sqlite3] [mysql] [postgresql]
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATABASES = {
    "sqlite3": (None, None, None),
    "mysql": ("MySQLdb", "FORKSAFE_MYSQL_", 3306),
    "postgresql": ("psycopg", "FORKSAFE_PG_", 5432),
}
# The one line that adds what is missing (make demo run as root installs the
# servers and mysqlclient's build itself: tests/machine/setup.sh demo).
SERVER_FIX = {
    "mysql": "sudo make demo (installs and starts MariaDB), or set FORKSAFE_MYSQL_HOST/PORT/USER/PASSWORD",
    "postgresql": "sudo make demo (installs and starts PostgreSQL), or set FORKSAFE_PG_HOST/PORT/USER/PASSWORD",
}
DRIVER_FIX = {
    "MySQLdb": "sudo apt-get install -y gcc python3-dev pkg-config libmariadb-dev && .venv/bin/pip install mysqlclient",
    "psycopg": ".venv/bin/pip install 'psycopg[binary]'",
}


def unavailable(vendor: str) -> str | None:
    driver, prefix, port = DATABASES[vendor]
    if driver is None:
        return None
    if importlib.util.find_spec(driver) is None:
        return f"driver {driver} not installed; to add it: {DRIVER_FIX[driver]}"
    host = os.environ.get(f"{prefix}HOST", "127.0.0.1")
    port = int(os.environ.get(f"{prefix}PORT", port))
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return f"no server at {host}:{port}; to add it: {SERVER_FIX[vendor]}"
    return None


def manage(vendor: str, engine: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FORKSAFE_DB": vendor, "FORKSAFE_ENGINE": engine,
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    return subprocess.run([sys.executable, str(HERE / "manage.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600, check=False)


def check(vendor: str, engine: str) -> dict[str, Any]:
    migrate = manage(vendor, engine, "migrate", "--verbosity", "0")
    if migrate.returncode:
        return {"error": migrate.stderr.strip().splitlines()[-1]}
    process = manage(vendor, engine, "forksafe_check", "--format", "json", "--timeout", "10")
    try:
        (result,) = json.loads(process.stdout)
    except ValueError:
        return {"error": (process.stderr.strip().splitlines() or ["no output"])[-1]}
    return result  # type: ignore[no-any-return]


def fanout(vendor: str, engine: str) -> str:
    """manage.py fanout: sum prices in 4 forked workers through the ORM."""
    process = manage(vendor, engine, "fanout", "--json", "--workers", "4", "--close-in-initializer")
    try:
        report = json.loads(process.stdout)
    except ValueError:
        return f"OPEN: crashed: {(process.stderr.strip().splitlines() or ['no output'])[-1]}"
    if report["parent_error"]:
        return f"OPEN: parent lost its session: {report['parent_error']}".splitlines()[0]
    if report["worker_errors"]:
        return f"OPEN: workers failed: {report['worker_errors'][0]}"
    if report["workers_used_inherited_connection"]:
        return "OPEN: workers used the parent's connection"
    return "safe"


def cell(hazard: dict[str, Any]) -> str:
    return "safe" if hazard["safe"] else f"OPEN: {hazard['detail']}"


def main() -> None:
    vendors = sys.argv[1:] or list(DATABASES)
    unknown = sorted(set(vendors) - set(DATABASES))
    if unknown:
        sys.exit(f"unknown database {', '.join(unknown)}: choose among {', '.join(DATABASES)}")
    if "sqlite3" in vendors:
        print("Forking real children on each database: does the parent keep its session?")
    for vendor in vendors:
        reason = unavailable(vendor)
        if reason:
            print(f"\n{vendor}: skipped ({reason})")
            continue
        print(f"\n{vendor}:", flush=True)
        plain, forksafe = check(vendor, "plain"), check(vendor, "forksafe")
        for result in (plain, forksafe):
            if "error" in result or not result.get("reachable", False):
                print(f"  failed: {result.get('error')}")
                if vendor in SERVER_FIX:
                    print(f"  to fix it: {SERVER_FIX[vendor]}")
                break
        else:
            print(f"  {'hazard':<30} {'django.db.backends':<58} django_forksafe.backends")
            for mine, theirs in zip(plain["hazards"], forksafe["hazards"], strict=True):
                print(f"  {mine['hazard']:<30} {cell(mine)[:56]:<58} {cell(theirs)}")
            fanouts = [fanout(vendor, engine) for engine in ("plain", "forksafe")]
            print(f"  {'ORM in a process pool':<30} {fanouts[0][:56]:<58} {fanouts[1]}")


if __name__ == "__main__":
    main()
