"""
What a fork costs with the forksafe ENGINEs, against Django's.

The C extension acts in every fork of a process that imported it, so each
variant runs in a process of its own; rounds alternate between them and
the medians are compared. A process holds 10 aliases connected to
PostgreSQL and 200 more open descriptors (files, as a real server has).

- fork-and-exit: fork, the child calls os._exit(0), the parent waits. The
  child of a job runner that crashes or is recycled; of subprocess's fork.
- subprocess.run(["true"]): CPython's vfork (or fork) and exec.
- fork-and-query: fork, the child runs one query on a session of its own
  and exits, the parent waits and runs its next query. Against the least a
  correct child can do (it drops the inherited connection objects unclosed
  and connects anew: unsafe at exit and in every other way, but no less work
  is possible), and against closing every connection before each fork (what
  RQ, django-q and Celery's fixup do: the parent reconnects after).

    python -m tests.benchmarks.forks [--rounds 7] [--job fork-and-exit ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from tests import dbconfig

ALIASES, DESCRIPTORS = 10, 200
VARIANTS = {
    # name: (ENGINE, environment, what the job does around the fork)
    "plain": ("plain", {}, "nothing"),
    "forksafe": ("forksafe", {}, "nothing"),
    "forksafe (pure Python)": ("forksafe", {"DJANGO_FORKSAFE_NATIVE": "0"}, "nothing"),
    "plain, child drops": ("plain", {}, "child_drops"),
    "plain, close before fork": ("plain", {}, "close_before_fork"),
}
JOBS = {
    "fork-and-exit": ("plain", "forksafe", "forksafe (pure Python)"),
    "subprocess.run": ("plain", "forksafe", "forksafe (pure Python)"),
    "fork-and-query": ("plain, child drops", "forksafe", "forksafe (pure Python)", "plain, close before fork"),
}


def measure(job: str, engine: str, around: str, forks: int) -> tuple[float, float]:
    """In this process: the median microseconds of `forks` jobs, wall clock
    and the child's CPU (user and system, from wait4(): the kernel's exit
    and the page faults included, the parent's share of fork() not)."""
    import django
    from django.conf import settings

    aliases = [f"a{i}" for i in range(ALIASES)]
    settings.configure(
        DATABASES={"default": {}, **{alias: dbconfig.database("postgresql", engine) for alias in aliases}},
        USE_TZ=True,
    )
    django.setup()
    from django.db import connections

    for alias in aliases:
        connections[alias].ensure_connection()
    files = [os.open(os.devnull, os.O_RDONLY) for _ in range(DESCRIPTORS)]

    def query(alias: str) -> None:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")

    def one() -> tuple[float, float]:
        started = time.perf_counter()
        if job == "subprocess.run":
            subprocess.run(["true"], check=True)
            return time.perf_counter() - started, 0.0
        if around == "close_before_fork":
            connections.close_all()
        pid = os.fork()
        if pid == 0:
            if job == "fork-and-query":
                if around == "child_drops":
                    for alias in aliases:
                        connections[alias].connection = None
                query("a0")
            os._exit(0)
        _, _, usage = os.wait4(pid, 0)
        if job == "fork-and-query":
            query("a0")
        return time.perf_counter() - started, usage.ru_utime + usage.ru_stime

    for _ in range(5):
        one()
    samples = [one() for _ in range(forks)]
    for fd in files:
        os.close(fd)
    connections.close_all()
    return statistics.median(wall for wall, _ in samples) * 1e6, statistics.median(cpu for _, cpu in samples) * 1e6


def compare(job: str, rounds: int, forks: int) -> dict[str, tuple[float, float]]:
    """Median over rounds of each variant's medians, alternating variants."""
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in JOBS[job]}
    for round_number in range(rounds):
        order = JOBS[job] if round_number % 2 == 0 else tuple(reversed(JOBS[job]))
        for name in order:
            engine, env, around = VARIANTS[name]
            process = subprocess.run(
                [sys.executable, "-m", "tests.benchmarks.forks", "--measure", job, engine, around, str(forks)],
                capture_output=True, text=True, check=True, env={**os.environ, **env},
            )
            wall, cpu = process.stdout.split()[-2:]
            results[name].append((float(wall), float(cpu)))
    return {
        name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
        for name, values in results.items()
    }


def report(rounds: int, jobs: tuple[str, ...] = tuple(JOBS)) -> None:
    print(f"a fork with {ALIASES} aliases on PostgreSQL and {DESCRIPTORS} more descriptors, "
          f"µs (median of {rounds} alternating rounds), wall clock [child's CPU]:")
    for job, forks in (("fork-and-exit", 300), ("subprocess.run", 300), ("fork-and-query", 60)):
        if job not in jobs:
            continue
        medians = compare(job, rounds, forks)
        base, base_cpu = medians[JOBS[job][0]]
        print(f"  {job}: " + ", ".join(
            f"{name} {wall:.0f} ({wall - base:+.0f}; {wall / base:.3f})"
            + (f" [{cpu:.0f} ({cpu - base_cpu:+.0f})]" if cpu else "")
            for name, (wall, cpu) in medians.items()
        ))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--job", action="append", choices=list(JOBS), help="only this job (repeatable)")
    parser.add_argument("--measure", nargs=4, metavar=("JOB", "ENGINE", "AROUND", "FORKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        job, engine, around, forks = args.measure
        print(*measure(job, engine, around, int(forks)))
        return
    reason = dbconfig.unreachable_reason("postgresql")
    if reason:
        sys.exit(reason)
    report(args.rounds, tuple(args.job or JOBS))


if __name__ == "__main__":
    main()
