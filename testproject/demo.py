"""
make demo: fork process-pool workers through the ORM, first on Django's plain
ENGINE, then on the forksafe ENGINE, and show what happened to the parent's
database session. SQLite always; MariaDB and PostgreSQL when they answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVERS = {
    "mysql": ("FORKSAFE_MYSQL_", "127.0.0.1", "3306"),
    "postgresql": ("FORKSAFE_PG_", "127.0.0.1", "5432"),
}


def reachable(vendor: str) -> bool:
    if vendor == "sqlite3":
        return True
    prefix, host, port = SERVERS[vendor]
    try:
        address = (os.environ.get(prefix + "HOST", host), int(os.environ.get(prefix + "PORT", port)))
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


def manage(vendor: str, engine: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FORKSAFE_DB": vendor, "FORKSAFE_ENGINE": engine,
           "PYTHONPATH": f"{HERE.parent}{os.pathsep}{HERE}"}
    return subprocess.run([sys.executable, str(HERE / "manage.py"), *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)


def verdict(report: dict[str, object]) -> str:
    if report["parent_error"]:
        return f"parent LOST its session: {str(report['parent_error']).splitlines()[0]}"
    problems = []
    if report["parent_session_before"] != report["parent_session_after"]:
        problems.append("parent was reconnected")
    if report["workers_used_inherited_connection"]:
        problems.append(f"{report['workers_used_inherited_connection']} tasks used the parent's connection")
    if report["worker_errors"]:
        problems.append(f"workers failed: {report['worker_errors'][0]}")
    if report["total"] != report["expected_total"]:
        problems.append("wrong total")
    return "; ".join(problems) or "parent kept its session, every worker its own, total right"


def main() -> None:
    print("Process-pool workers forked through the ORM: plain ENGINE vs forksafe ENGINE.")
    for vendor in ("sqlite3", "mysql", "postgresql"):
        if not reachable(vendor):
            print(f"\n{vendor}: server not reachable, skipped")
            continue
        print(f"\n{vendor}:")
        for engine in ("plain", "forksafe"):
            migrate = manage(vendor, engine, "migrate", "--verbosity", "0")
            if migrate.returncode:
                print(f"  {engine:<9} migrate failed: {migrate.stderr.strip().splitlines()[-1]}")
                continue
            run = manage(vendor, engine, "fanout", "--json", "--workers", "4")
            if run.returncode:
                print(f"  {engine:<9} crashed: {run.stderr.strip().splitlines()[-1]}")
                continue
            report = json.loads(run.stdout)
            print(f"  {report['engine']:<36} {verdict(report)}")


if __name__ == "__main__":
    main()
