"""
Per-get overhead of the fork-safe memcached BACKENDs against Django's own:
instructions (callgrind) and system calls (strace -c) per ``cache.get()``, the
difference between a process that makes 5000 gets and one that makes 1000,
so that start-up cancels out. Against the memcached of tests/caches.

    python -m tests.benchmarks.cache_overhead
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from tests import caches

VARIANTS = ("plain", "forksafe")


# pymemcache with LOCATION a host name: the server up, or down (held for
# dead by HashClient at the first get: retry_attempts=0; ignore_exc=True, so
# that every get answers a miss without a system call).
HOST_NAME_CASES = {
    "pymemcache host name": {},
    "pymemcache host name, server down": {"ignore_exc": True, "retry_attempts": 0, "connect_timeout": 1},
}


def cache_entry(library: str, variant: str) -> dict[str, Any]:
    if library not in HOST_NAME_CASES:
        return caches.cache_entry(library, variant)
    entry = caches.cache_entry("pymemcache", variant, "hostname")
    if HOST_NAME_CASES[library]:
        entry["LOCATION"] = f"{caches.HOST_NAME}:1"  # tcpmux: nothing listens there.
        entry["OPTIONS"] = {**entry["OPTIONS"], **HOST_NAME_CASES[library]}
    return entry


def run_gets(library: str, variant: str, gets: int) -> None:
    """`gets` gets of one key; with library "dict", a dict stands in for
    pylibmc's client: our own cost alone, without the network's variance
    (libmemcached polls again when a reply is late)."""
    import django
    from django.conf import settings

    stand_in = library == "dict"
    library = "pylibmc" if stand_in else library
    settings.configure(CACHES={"default": cache_entry(library, variant)}, DATABASES={}, USE_TZ=True)
    django.setup()
    from django.core.cache import caches as django_caches

    cache: Any = django_caches["default"]
    key = "forksafe-bench"
    if stand_in:
        # Built as in use, then replaced (as assigning to Django's cached_property does).
        assert cache._cache is not None
        cache._cache = {cache.make_and_validate_key(key): "value"}
    elif library not in HOST_NAME_CASES or not HOST_NAME_CASES[library]:
        cache.set(key, "value")
    else:
        assert cache.get(key) is None  # The server is down: held for dead from now on.
    get = cache.get
    for _ in range(gets):
        get(key)


def command(library: str, variant: str, gets: int) -> list[str]:
    return [sys.executable, "-m", "tests.benchmarks.cache_overhead", "--gets-only", library, variant, str(gets)]


def instructions(library: str, variant: str, gets: int) -> int:
    process = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command(library, variant, gets)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return int(process.stderr.rsplit("Collected : ", 1)[1].split()[0])


def instructions_per_get(library: str, variant: str) -> float:
    return (instructions(library, variant, 5000) - instructions(library, variant, 1000)) / 4000


def syscalls(library: str, variant: str, gets: int) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(mode="r") as output:
        subprocess.run(["strace", "-f", "-c", "-o", output.name, *command(library, variant, gets)], check=True)
        counts: dict[str, int] = {}
        for line in output.read().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[3].isdigit():
                counts[fields[-1]] = int(fields[3])
    return counts


def syscalls_per_get(library: str, variant: str) -> dict[str, float]:
    many, few = syscalls(library, variant, 6000), syscalls(library, variant, 1000)
    return {name: (many.get(name, 0) - few.get(name, 0)) / 5000 for name in many}


def report() -> None:
    """The cache section of tests.benchmarks.overhead."""
    available = [library for library in caches.MEMCACHED_LIBRARIES if caches.unreachable_reason(library) is None]
    if not available:
        print("cache: memcached not reachable, left out")
        return
    print("cache.get() through Django's memcached BACKEND (plain) and ours (forksafe):")
    hosted = list(HOST_NAME_CASES) if "pymemcache" in available else []
    for library in [*available, "dict", *hosted]:
        try:
            __import__({"dict": "pylibmc", **dict.fromkeys(HOST_NAME_CASES, "pymemcache")}.get(library, library))
        except ImportError:
            print(f"  {library}: not installed, left out")
            continue
        line = f"  {'(a dict)' if library == 'dict' else library:<11}"
        if library in HOST_NAME_CASES:
            line += "\n   "
        if shutil.which("valgrind"):
            executed = {variant: instructions_per_get(library, variant) for variant in VARIANTS}
            line += "  instructions per get: " + ", ".join(
                f"{variant} {count:.0f}" for variant, count in executed.items()
            ) + f" ({executed['forksafe'] / executed['plain'] - 1:+.2%})"
        if shutil.which("strace") and library != "dict":
            calls = {variant: syscalls_per_get(library, variant) for variant in VARIANTS}
            line += "; system calls per get: " + ", ".join(
                f"{variant} {per_get['total']:.2f} (getpid {per_get.get('getpid', 0.0):.2f})"
                for variant, per_get in calls.items()
            )
        if not shutil.which("valgrind"):
            line += "  instructions per get: skipped, valgrind is not installed"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gets-only", nargs=3, metavar=("LIBRARY", "VARIANT", "GETS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gets_only:  # Under callgrind or strace.
        library, variant, gets = args.gets_only
        run_gets(library, variant, int(gets))
        return
    report()


if __name__ == "__main__":
    main()
