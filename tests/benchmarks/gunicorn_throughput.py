"""
gunicorn throughput: the forksafe ENGINE with --preload against Django's
plain ENGINE without it (the usual way around the fork hazards), same
workers, same persistent connections, alternating rounds; prints the median
requests per second of each and their ratio.

    python -m tests.benchmarks.gunicorn_throughput [--vendor postgresql] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.programs import free_port, gunicorn_command, hammer, prepare, project_env, running, wrong


def requests_per_second(vendor: str, engine: str, preload: bool, requests: int) -> float:
    port = free_port()
    command = [arg for arg in gunicorn_command(port, "sync") if preload or arg != "--preload"]
    command += ["--max-requests", "0"]  # No recycling while measuring.
    env = project_env(vendor, engine, FORKSAFE_CONN_MAX_AGE="600")
    with tempfile.TemporaryDirectory() as directory, running(command, env, port, Path(directory) / "log"):
        hammer(port, requests=100)  # Warm up every worker.
        started = time.perf_counter()
        responses = hammer(port, requests=requests)
        elapsed = time.perf_counter() - started
    assert not wrong(responses)
    return requests / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vendor", default="postgresql", choices=["postgresql", "mysql", "sqlite3"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    compare(args.vendor, args.rounds, args.requests)


def compare(vendor: str, rounds: int, requests: int) -> None:
    prepare(vendor)
    forksafe, plain = [], []
    for _ in range(rounds):
        forksafe.append(requests_per_second(vendor, "forksafe", True, requests))
        plain.append(requests_per_second(vendor, "plain", False, requests))
    print(f"gunicorn, 3 sync workers, {vendor}, CONN_MAX_AGE=600, median of {rounds} rounds:")
    print(f"  forksafe ENGINE, --preload:     {statistics.median(forksafe):8.0f} requests/s")
    print(f"  plain ENGINE, without preload:  {statistics.median(plain):8.0f} requests/s")
    print(f"  ratio:                          {statistics.median(forksafe) / statistics.median(plain):8.3f}")


if __name__ == "__main__":
    main()
