"""
Per-query overhead of the forksafe ENGINEs against Django's plain ones.

Runs both side by side in one process, alternating rounds, and prints the
median ratio of per-query time for ``cursor().execute("SELECT 1")``, for the
default and the strict mode, on in-memory SQLite, MariaDB and PostgreSQL
(servers that do not answer are left out). Then the time a child spends
invalidating its inherited connections, with 1 and with 10 aliases; then
gunicorn --preload's throughput on the forksafe ENGINE against the plain
ENGINE without preload (tests/benchmarks/gunicorn_throughput.py).

    python -m tests.benchmarks.overhead [--rounds 15]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import shutil
import statistics
import time
from typing import Any

import django
from django.conf import settings

from tests import dbconfig

QUERIES = {"sqlite3": 20000, "mysql": 3000, "postgresql": 3000}


def run_queries(connection: Any, queries: int) -> tuple[float, float]:
    """Wall-clock and client CPU seconds for `queries` queries."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(queries):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    return time.perf_counter() - wall, time.process_time() - cpu


def wrappers(vendor: str) -> dict[str, Any]:
    from django.db.utils import ConnectionHandler

    name = {"NAME": ":memory:"} if vendor == "sqlite3" else {}
    handler = ConnectionHandler(
        {
            "default": {},  # Django requires one; the dummy backend.
            "plain": dbconfig.database(vendor, "plain", **name),
            "forksafe": dbconfig.database(vendor, **name),
            "strict": dbconfig.database(vendor, **name),
        }
    )
    found = {alias: handler[alias] for alias in ("plain", "forksafe", "strict")}
    for alias, connection in found.items():
        settings.FORKSAFE_STRICT = alias == "strict"  # Read when connecting.
        connection.ensure_connection()
    settings.FORKSAFE_STRICT = False
    return found


def compare(vendor: str, rounds: int) -> dict[str, float]:
    """Median over rounds of each wrapper's per-query time over the plain
    one's. All three wrappers send through the plain one's raw connection:
    on loopback, two server sessions can differ in latency severalfold (where
    the scheduler puts their threads), which would swamp what is measured."""
    connections = wrappers(vendor)
    queries = QUERIES[vendor]
    order = list(connections)
    own_raw = {alias: connection.connection for alias, connection in connections.items()}
    for alias in order:
        connections[alias].connection = own_raw["plain"]
    for alias in order:  # Warm up.
        run_queries(connections[alias], queries // 10)
    ratios: dict[str, list[float]] = {}
    plain_wall: list[float] = []
    batch = 100  # Interleave finely, so that drift hits all wrappers alike.
    for round_number in range(rounds):
        wall, cpu = dict.fromkeys(order, 0.0), dict.fromkeys(order, 0.0)
        for batch_number in range(queries // batch):
            for alias in order if (round_number + batch_number) % 2 else reversed(order):
                batch_wall, batch_cpu = run_queries(connections[alias], batch)
                wall[alias] += batch_wall
                cpu[alias] += batch_cpu
        plain_wall.append(wall["plain"] / queries)
        for alias in ("forksafe", "strict"):
            ratios.setdefault(f"{alias}_wall", []).append(wall[alias] / wall["plain"])
            ratios.setdefault(f"{alias}_cpu", []).append(cpu[alias] / cpu["plain"])
    for alias, connection in connections.items():
        connection.connection = own_raw[alias]
        connection.close()
    return {
        "plain_us": statistics.median(plain_wall) * 1e6,
        **{key: statistics.median(values) for key, values in ratios.items()},
    }


def invalidation_microseconds(vendor: str, aliases: int, rounds: int, warm: bool) -> float:
    """Time invalidate_inherited() in a child forked without at-fork handlers
    (so that it is not already done), with `aliases` open connections. In a
    fresh child most of the time is copy-on-write page faults; a warm child
    has had its pages copied already, leaving our own work."""
    from django.db.utils import ConnectionHandler

    from django_forksafe import registry

    handler = ConnectionHandler(
        {"default": {}, **{f"a{i}": dbconfig.database(vendor) for i in range(aliases)}}
    )
    for i in range(aliases):
        handler[f"a{i}"].ensure_connection()
    samples = []
    fork = ctypes.PyDLL(None).fork
    for _ in range(rounds):
        read_end, write_end = os.pipe()
        pid = fork()
        if pid == 0:
            if warm:
                gc.collect()  # Copies the pages the first touches would fault in.
            started = time.perf_counter()
            invalidation = registry.invalidate_inherited()
            elapsed = time.perf_counter() - started
            assert len(invalidation.aliases) == aliases
            os.write(write_end, json.dumps(elapsed).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            samples.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    handler.close_all()
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--gunicorn-rounds", type=int, default=5,
        help="Rounds of the gunicorn throughput comparison (0 to leave it out).",
    )
    args = parser.parse_args()
    settings.configure(DATABASES={}, USE_TZ=True)
    django.setup()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.python_implementation()} "
          f"{platform.python_version()}, Django {django.get_version()}, "
          f"{os.cpu_count()} CPUs, median of {args.rounds} alternating rounds")
    print("per-query time, forksafe and strict over plain (wall clock; client CPU):")
    print(f"{'database':<12} {'plain µs':>9} {'forksafe':>9} {'(CPU)':>7} {'strict':>8} {'(CPU)':>7}")
    available = [v for v in ("sqlite3", *dbconfig.SERVER_VENDORS) if not dbconfig.unreachable_reason(v)]
    for vendor in available:
        row = compare(vendor, args.rounds)
        print(f"{vendor:<12} {row['plain_us']:>9.2f} {row['forksafe_wall']:>9.3f} "
              f"{row['forksafe_cpu']:>7.3f} {row['strict_wall']:>8.3f} {row['strict_cpu']:>7.3f}")
    print("\nchild's invalidation of inherited connections (no network I/O), µs:")
    print(f"{'database':<12} {'aliases':>7} {'fresh child':>12} {'warm child':>11}")
    for vendor in (v for v in available if v != "sqlite3"):
        for aliases in (1, 10):
            fresh, warm = (
                invalidation_microseconds(vendor, aliases, args.rounds, warm)
                for warm in (False, True)
            )
            print(f"{vendor:<12} {aliases:>7} {fresh:>12.1f} {warm:>11.1f}")
    if args.gunicorn_rounds and "postgresql" in available and shutil.which("gunicorn"):
        from tests.benchmarks import gunicorn_throughput

        print()
        gunicorn_throughput.compare("postgresql", args.gunicorn_rounds, requests=2000)


if __name__ == "__main__":
    main()
