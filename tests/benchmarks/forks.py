"""
What a fork costs with the forksafe ENGINEs, against Django's.

The C extension acts in every fork of a process that imported it, so each
variant runs in a process of its own. Each variant is measured in pairs
with the job's baseline: the two processes of a round take turns, a sixth
of the jobs each at a time, so that the machine's drift (this VM's speed
moves by a tenth within minutes) touches both alike; each round starts new
ones.
A process holds 10 aliases connected to
the server (PostgreSQL, and for fork-and-query MariaDB too) and 200 more open
descriptors (files, as a real server has).

- fork-and-exit: fork, the child calls os._exit(0), the parent waits. The
  child of a job runner that crashes or is recycled; of subprocess's fork.
- subprocess.run(["true"]): CPython's vfork (or fork) and exec.
- fork-and-query: fork, the child runs one query on a session of its own
  and exits, the parent waits and runs its next query. Against the least a
  correct child can do (it sets the inherited connection objects aside
  unclosed and connects anew: unsafe at exit and in every other way, but no
  less work is possible), and against closing every connection before each fork (what
  RQ, django-q and Celery's fixup do: the parent reconnects after).

    python -m tests.benchmarks.forks [--rounds 7] [--job fork-and-exit ...] [--vendor mysql ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from tests import dbconfig

ALIASES, DESCRIPTORS = 10, 200
TURNS = 6  # Per process and round: each takes a sixth of the jobs in a row.
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


def serve(job: str, engine: str, around: str, vendor: str) -> None:
    """In this process: one job per line read from stdin, answered with its
    microseconds, wall clock and the child's CPU (user and system, from
    wait4(): the kernel's exit and the page faults included, the parent's
    share of fork() not)."""
    # Both processes of a pair, and their children, on one CPU: whether a
    # child ran on the other one (its caches cold) varied more than the
    # difference measured.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    import django
    from django.conf import settings

    aliases = [f"a{i}" for i in range(ALIASES)]
    settings.configure(
        DATABASES={"default": {}, **{alias: dbconfig.database(vendor, engine) for alias in aliases}},
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

    inherited: list[Any] = []

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
                        # Kept, not freed: mysqlclient's dealloc would send
                        # the parent's session a COM_QUIT.
                        inherited.append(connections[alias].connection)
                        connections[alias].connection = None
                query("a0")
            os._exit(0)
        _, _, usage = os.wait4(pid, 0)
        if job == "fork-and-query":
            query("a0")
        return time.perf_counter() - started, usage.ru_utime + usage.ru_stime

    for _ in range(5):
        one()
    print("ready", flush=True)
    for line in sys.stdin:
        block = [one() for _ in range(int(line))]
        print(" ".join(f"{wall * 1e6:.1f},{cpu * 1e6:.1f}" for wall, cpu in block), flush=True)
    for fd in files:
        os.close(fd)
    connections.close_all()


def lockstep(
    job: str, names: tuple[str, str], rounds: int, forks: int, vendor: str
) -> dict[str, tuple[float, float]]:
    """Each round starts a process for each of two variants; they take
    turns, a sixth of the jobs at a time (in alternating order), so that the
    machine's drift touches both alike while each runs warm, as a job runner
    does. Median over rounds of each process's medians."""
    block = max(1, forks // TURNS)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(rounds):
        processes = {}
        for name in names:
            engine, env, around = VARIANTS[name]
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.benchmarks.forks", "--serve", job, engine, around, vendor],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env},
            )
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        try:
            for process in processes.values():
                assert process.stdout is not None and process.stdout.readline() == "ready\n"
            for turn in range(TURNS):
                for name in names if turn % 2 == 0 else reversed(names):
                    process = processes[name]
                    assert process.stdin is not None and process.stdout is not None
                    process.stdin.write(f"{block}\n")
                    process.stdin.flush()
                    for sample in process.stdout.readline().split():
                        wall, cpu = sample.split(",")
                        samples[name].append((float(wall), float(cpu)))
        finally:
            for process in processes.values():
                assert process.stdin is not None
                process.stdin.close()
            for process in processes.values():
                if process.wait() != 0:
                    raise RuntimeError(f"a measuring process failed ({process.args!r})")
        for name, values in samples.items():
            results[name].append(
                (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
            )
    return {
        name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
        for name, values in results.items()
    }


# The fork's own cost does not depend on the server; a query's does.
VENDORS = {"fork-and-exit": ("postgresql",), "subprocess.run": ("postgresql",),
           "fork-and-query": dbconfig.SERVER_VENDORS}


def report(
    rounds: int, jobs: tuple[str, ...] = tuple(JOBS), vendors: tuple[str, ...] = dbconfig.SERVER_VENDORS
) -> None:
    """Each variant against the job's baseline, in pairs: a third process
    taking turns with them would change their caches (the pure-Python
    variant's children touch much more memory)."""
    print(f"a fork with {ALIASES} aliases on the server and {DESCRIPTORS} more descriptors, "
          f"µs (median of {rounds} rounds, each variant in lockstep with the first), wall clock [child's CPU]:")
    for job, forks in (("fork-and-exit", 300), ("subprocess.run", 300), ("fork-and-query", 60)):
        for vendor in VENDORS[job]:
            if job in jobs and vendor in vendors:
                report_job(job, forks, rounds, vendor)


def report_job(job: str, forks: int, rounds: int, vendor: str) -> None:
    baseline, *others = JOBS[job]
    cells, baseline_walls, baseline_cpus = [], [], []
    for other in others:
        pair = lockstep(job, (baseline, other), rounds, forks, vendor)
        (base, base_cpu), (wall, cpu) = pair[baseline], pair[other]
        baseline_walls.append(base)
        baseline_cpus.append(base_cpu)
        cells.append(
            f"{other} {wall:.0f} ({wall - base:+.0f}; {wall / base:.3f})"
            + (f" [{cpu:.0f} ({cpu - base_cpu:+.0f})]" if cpu else "")
        )
    base, base_cpu = statistics.median(baseline_walls), statistics.median(baseline_cpus)
    print(f"  {job} ({vendor}): {baseline} {base:.0f}" + (f" [{base_cpu:.0f}]" if base_cpu else "") + "; "
          + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--job", action="append", choices=list(JOBS), help="only this job (repeatable)")
    parser.add_argument("--vendor", action="append", choices=dbconfig.SERVER_VENDORS, help="only this server")
    parser.add_argument("--serve", nargs=4, metavar=("JOB", "ENGINE", "AROUND", "VENDOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    vendors = tuple(args.vendor or dbconfig.SERVER_VENDORS)
    for vendor in vendors:
        reason = dbconfig.unreachable_reason(vendor)
        if reason:
            sys.exit(reason)
    report(args.rounds, tuple(args.job or JOBS), vendors)


if __name__ == "__main__":
    main()
