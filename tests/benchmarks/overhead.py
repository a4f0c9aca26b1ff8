"""
Per-query overhead of the forksafe ENGINEs against Django's plain ones.

Runs them side by side in one process, alternating rounds, and prints the
median ratio of per-query time for ``cursor().execute("SELECT 1")`` on a
SQLite file on tmpfs, MariaDB and PostgreSQL (servers that do not answer are
left out): the forksafe ENGINE as shipped (MADV_WIPEONFORK), its getpid()
fallback, and Django's plain ENGINE against itself (the noise floor). Then
the system calls per query of each, counted with ``strace -c``; then the time
a child spends invalidating its inherited connections, with 1 and with 10
aliases; then a cache get through the memcached BACKENDs (see
tests/benchmarks/cache_overhead.py); then gunicorn --preload's throughput on the forksafe ENGINE against
the plain ENGINE without preload (tests/benchmarks/gunicorn_throughput.py).

    python -m tests.benchmarks.overhead [--rounds 15] [--gunicorn-rounds 5] [--section instructions ...]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import django
from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.asyncio import async_unsafe

from django_forksafe import registry
from django_forksafe.detection import PidMark
from tests import dbconfig

QUERIES = {"sqlite3": 20000, "mysql": 3000, "postgresql": 3000}
# "plain_subclass" is Django's wrapper class subclassed with nothing in it: the
# same code under another type. CPython's specialising interpreter caches
# attribute lookups per type, and these variants take turns through Django's
# code, so any other type pays for the switches: measured against plain, an
# empty subclass costs 1-4 %. Against it, what is left is our own cost.
# Each of the measured variants runs in a mix of its own with these two: every
# further type in the mix slows them all down a little more.
VARIANTS = ("plain", "plain_subclass", "forksafe", "getpid")
BASELINES = VARIANTS[:2]
SQLITE_FILE = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(), "forksafe-bench.sqlite3")
_PID_MARK = PidMark()


def with_getpid_checkout(wrapper_class: type[Any]) -> type[Any]:
    """The forksafe wrapper as it runs where the kernel refuses
    MADV_WIPEONFORK: the same check in ensure_connection(), reading the
    getpid() mark."""

    class GetpidCheckout(wrapper_class):  # type: ignore[misc]
        @async_unsafe
        def ensure_connection(self) -> None:
            if not _PID_MARK[0]:
                registry.invalidate_if_forked()
            if self.connection is None:
                BaseDatabaseWrapper.ensure_connection(self)

    return GetpidCheckout


def run_queries(connection: Any, queries: int) -> tuple[float, float]:
    """Wall-clock and client CPU seconds for `queries` queries."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(queries):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    return time.perf_counter() - wall, time.process_time() - cpu


def wrapper(vendor: str, variant: str) -> BaseDatabaseWrapper:
    from django.db.utils import ConnectionHandler

    name = {"NAME": SQLITE_FILE} if vendor == "sqlite3" else {}
    engine = "plain" if variant.startswith("plain") else "forksafe"
    handler = ConnectionHandler({"default": {}, variant: dbconfig.database(vendor, engine, **name)})
    connection: BaseDatabaseWrapper = handler[variant]
    wrapper_class = {
        "plain_subclass": lambda cls: type("PlainSubclass", (cls,), {}),
        "getpid": with_getpid_checkout,
    }.get(variant)
    if wrapper_class is not None:  # A new instance: __class__ assignment slows attribute access.
        connection = wrapper_class(type(connection))(connection.settings_dict, variant)
    connection.ensure_connection()
    return connection


def compare(vendor: str, rounds: int, measured: str) -> dict[str, float]:
    """Median over rounds of each variant's per-query time over the plain
    one's. All variants send through the plain one's raw connection: on
    loopback, two server sessions can differ in latency severalfold (where
    the scheduler puts their threads), which would swamp what is measured."""
    mix = (*BASELINES, measured)
    connections = {variant: wrapper(vendor, variant) for variant in mix}
    queries = QUERIES[vendor]
    own_raw = {variant: connection.connection for variant, connection in connections.items()}
    for connection in connections.values():
        connection.connection = own_raw["plain"]
    for connection in connections.values():  # Warm up.
        run_queries(connection, queries // 10)
    ratios: dict[str, list[float]] = {}
    plain_wall: list[float] = []
    batch = 100  # Interleave finely, so that drift hits all variants alike.
    order = list(mix)
    shuffle = random.Random(0).shuffle  # Every variant follows every other alike.
    for _ in range(rounds):
        wall, cpu = dict.fromkeys(order, 0.0), dict.fromkeys(order, 0.0)
        gc.collect()
        gc.disable()  # A collection would land on whichever variant runs then.
        try:
            for _ in range(queries // batch):
                shuffle(order)
                for variant in order:
                    batch_wall, batch_cpu = run_queries(connections[variant], batch)
                    wall[variant] += batch_wall
                    cpu[variant] += batch_cpu
        finally:
            gc.enable()
        plain_wall.append(wall["plain"] / queries)
        for variant in mix[1:]:
            ratios.setdefault(f"{variant}_wall", []).append(wall[variant] / wall["plain"])
            ratios.setdefault(f"{variant}_cpu", []).append(cpu[variant] / cpu["plain"])
        ratios.setdefault(f"{measured}_own", []).append(wall[measured] / wall["plain_subclass"])
    for variant, connection in connections.items():
        connection.connection = own_raw[variant]
        connection.close()
    return {
        "plain_us": statistics.median(plain_wall) * 1e6,
        **{key: statistics.median(values) for key, values in ratios.items()},
    }


def syscalls(vendor: str, variant: str, queries: int) -> dict[str, int]:
    """System calls, by name and in total, of a process that runs `queries` queries."""
    with tempfile.NamedTemporaryFile(mode="r") as output:
        subprocess.run(
            ["strace", "-f", "-c", "-o", output.name, sys.executable, "-m", "tests.benchmarks.overhead",
             "--queries-only", vendor, variant, str(queries)],
            check=True,
        )
        counts: dict[str, int] = {}
        for line in output.read().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[3].isdigit():
                counts[fields[-1]] = int(fields[3])
    return counts


def instructions(vendor: str, variant: str, queries: int, layout: tuple[int, int]) -> int:
    """Instructions (callgrind) of a process that runs `queries` queries, in
    the process layout `layout` (see LAYOUTS)."""
    seed, padding = layout
    process = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
         "tests.benchmarks.overhead", "--queries-only", vendor, variant, str(queries)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": str(seed), "FORKSAFE_BENCHMARK_PADDING": "x" * padding},
    )
    return int(process.stderr.rsplit("Collected : ", 1)[1].split()[0])


def instructions_per_query(vendor: str, variant: str, layout: tuple[int, int] = (0, 0)) -> float:
    """Deterministic for a given layout, unlike time: the difference between
    3000 queries and 1000, per query."""
    return (instructions(vendor, variant, 3000, layout) - instructions(vendor, variant, 1000, layout)) / 2000


# The process layouts the instruction counts are taken in: a hash seed and
# the length of an environment variable. Both move where objects land (dict
# layouts, the allocator's pools, the interned names whose addresses CPython's
# type attribute cache hashes): a name that collides there with another on
# every query costs it hundreds of instructions, in one layout and not the
# next, plain or not. Their spread is how far the count moves with the
# layout alone; the median across them is the figure.
LAYOUTS = ((0, 0), (1, 57), (2, 133), (3, 250), (4, 777), (5, 1500))


def report_instructions() -> None:
    print("\ninstructions per query (callgrind), SQLite file on tmpfs, by layout (hash seed, padding):")
    if not shutil.which("valgrind"):
        print("  skipped: valgrind is not installed (make benchmark installs it on Debian as root)")
        return
    ratios = []
    for layout in LAYOUTS:
        variants = ("plain", "forksafe", "getpid") if layout == LAYOUTS[0] else ("plain", "forksafe")
        executed = {variant: instructions_per_query("sqlite3", variant, layout) for variant in variants}
        ratios.append(executed["forksafe"] / executed["plain"])
        print(f"  {layout}: " + ", ".join(
            f"{variant} {count:.0f} ({count / executed['plain']:.4f})" for variant, count in executed.items()
        ))
    print(f"  forksafe / plain: median {statistics.median(ratios):.4f}, from {min(ratios):.4f} to {max(ratios):.4f}")


def syscalls_per_query(vendor: str, variant: str) -> dict[str, float]:
    """The difference between 6000 queries and 1000, per query: what the
    process does besides the queries cancels out."""
    many, few = syscalls(vendor, variant, 6000), syscalls(vendor, variant, 1000)
    return {name: (many.get(name, 0) - few.get(name, 0)) / 5000 for name in many}


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
    return float(statistics.median(samples)) * 1e6


SECTIONS = ("queries", "instructions", "invalidation", "cache", "forks", "gunicorn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--gunicorn-rounds", type=int, default=5,
        help="Rounds of the gunicorn throughput comparison (0 to leave it out).",
    )
    parser.add_argument(
        "--section", action="append", choices=SECTIONS, help="only this part (repeatable; default: all)"
    )
    parser.add_argument("--queries-only", nargs=3, metavar=("VENDOR", "VARIANT", "QUERIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings.configure(DATABASES={}, USE_TZ=True)
    django.setup()
    if args.queries_only:  # Under strace, for syscalls().
        vendor, variant, queries = args.queries_only
        run_queries(wrapper(vendor, variant), int(queries))
        return
    sections = set(args.section or SECTIONS)
    from django_forksafe import detection

    print(f"{time.strftime('%Y-%m-%d')}, {platform.python_implementation()} "
          f"{platform.python_version()}, Django {django.get_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, median of {args.rounds} alternating rounds; "
          f"django_forksafe {'with' if detection.NATIVE is not None else 'WITHOUT'} its C extension, "
          f"fork detection {detection.METHOD}")
    available = [v for v in ("sqlite3", *dbconfig.SERVER_VENDORS) if not dbconfig.unreachable_reason(v)]
    for vendor in [v for v in available if v != "sqlite3"]:
        try:  # A fresh server (MariaDB 11.8's) has no "test" database.
            dbconfig.create_test_database(vendor)
        except RuntimeError as error:
            print(f"{vendor} left out: {error}")
            available.remove(vendor)
    if "queries" in sections:
        report_queries(available, args.rounds)
    if "instructions" in sections:
        report_instructions()
    if os.path.exists(SQLITE_FILE):
        os.remove(SQLITE_FILE)
    servers = tuple(v for v in available if v != "sqlite3")
    if "invalidation" in sections:
        print("\nchild's invalidation of inherited connections (no network I/O), µs:")
        print(f"{'database':<12} {'aliases':>7} {'fresh child':>12} {'warm child':>11}")
        for vendor in servers:
            for aliases in (1, 10):
                fresh, warm = (
                    invalidation_microseconds(vendor, aliases, args.rounds, warm)
                    for warm in (False, True)
                )
                print(f"{vendor:<12} {aliases:>7} {fresh:>12.1f} {warm:>11.1f}")
    if "cache" in sections:
        from tests.benchmarks import cache_overhead

        print()
        cache_overhead.report()
    if "forks" in sections and servers:
        from tests.benchmarks import forks

        print()
        forks.report(max(3, args.rounds // 2), vendors=servers)
    if "gunicorn" in sections and args.gunicorn_rounds and "postgresql" in available and shutil.which("gunicorn"):
        from tests.benchmarks import gunicorn_throughput

        print()
        gunicorn_throughput.compare("postgresql", args.gunicorn_rounds, requests=2000)


def report_queries(available: list[str], rounds: int) -> None:
    print("per-query time over plain (wall clock; client CPU) [over plain_subclass], system calls per query:")
    print(f"{'database':<11} {'plain µs':>8} {'plain_subclass':>14} {'forksafe':>22} {'getpid':>22}"
          "   system calls per query (of which getpid): plain, forksafe, getpid")
    for vendor in available:
        row = {**compare(vendor, rounds, "forksafe"), **compare(vendor, rounds, "getpid")}
        ratios = "".join(
            f" {row[f'{variant}_wall']:>6.3f} ({row[f'{variant}_cpu']:.3f})"
            + (f" [{row[f'{variant}_own']:.3f}]" if f"{variant}_own" in row else "")
            for variant in VARIANTS[1:]
        )
        counts = "  (strace not installed: system calls skipped)"
        if shutil.which("strace"):
            counts = ""
            for variant in ("plain", "forksafe", "getpid"):
                per_query = syscalls_per_query(vendor, variant)
                counts += f" {per_query['total']:.2f} ({per_query.get('getpid', 0.0):.2f})"
        print(f"{vendor:<11} {row['plain_us']:>8.2f}{ratios}  {counts}")


if __name__ == "__main__":
    main()
