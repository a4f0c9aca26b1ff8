"""
Django's own database tests, run on the forksafe ENGINEs.

The test suite ships in Django's source distribution (not its wheel): it is
fetched from PyPI for the installed Django version, once per cache directory,
and run with Django's runtests.py. Its parallel runner forks workers that
close their inherited connections: that runs through our code too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import django
import pytest

from tests import IMPORT_PATH, dbconfig
from tests.utils import require_server, skip_or_fail

LABELS = [
    "backends",
    "basic",
    "dbshell",
    "delete_regress",
    "get_or_create",
    "inspectdb",
    "migrations",
    "select_for_update",
    "test_utils",
    "transaction_hooks",
    "transactions",
]
# MariaDB 10.11.19 crashed (signal 11) here on the information_schema join
# that MySQL's introspection sends, while the parallel workers changed
# tables: a server bug that takes every later test down with it.
SERVER_CRASHES = {("mysql", "inspectdb")}
CACHE = Path(
    os.environ.get(
        "FORKSAFE_DJANGO_SUITE_CACHE", Path(tempfile.gettempdir()) / "forksafe-django-suite"
    )
)


def django_tests() -> Path:
    version = django.__version__
    tests = CACHE / f"django-{version}" / "tests"
    if tests.is_dir():
        return tests
    CACHE.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(CACHE),
            f"django=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if download.returncode:
        skip_or_fail(f"cannot fetch Django {version}'s source distribution: {download.stderr[-500:]}")
    archive = next(CACHE.glob(f"[Dd]jango-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{archive.name[:-7]}/tests/")]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(CACHE, members=members, filter="data")
        else:  # Python 3.11.2 (Debian 12's) predates filter=; these are Django's tests/ only.
            tar.extractall(CACHE, members=members)
    extracted = CACHE / archive.name[:-7]
    if extracted != tests.parent:
        extracted.rename(tests.parent)
    return tests


def run_suite(
    vendor: str, engine: str, directory: Path, parallel: str
) -> subprocess.CompletedProcess[str]:
    # Names of their own, apart from every other suite run at once (tox runs
    # environments side by side): some of Django's tests create and drop
    # test_<NAME>, and its parallel runner clones test_<NAME>_<N>.
    name = dbconfig.test_database()[:40]
    databases = {
        alias: dbconfig.database(
            vendor,
            engine,
            **(
                {}
                if vendor == "sqlite3"
                else {
                    "NAME": f"{name}_suite_{alias}",
                    "TEST": {"NAME": f"test_{name}_suite_{alias}"},
                }
            ),
        )
        for alias in ("default", "other")
    }
    settings = directory / f"suite_{engine}.py"
    # Everything else as in the suite's own example settings of this version.
    settings.write_text(f"from test_sqlite import *  # noqa: F403\nDATABASES = {databases!r}\n")
    return subprocess.run(
        [
            sys.executable,
            "runtests.py",
            f"--settings={settings.stem}",
            "--noinput",
            f"--parallel={parallel}",
            *(label for label in LABELS if (vendor, label) not in SERVER_CRASHES),
        ],
        cwd=django_tests(),
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(directory), IMPORT_PATH])},
        capture_output=True,
        text=True,
        timeout=1200,
    )


def outcome(process: subprocess.CompletedProcess[str]) -> tuple[list[str], list[str]]:
    """The tests that failed, and the summary lines (Ran N tests, OK/FAILED)."""
    lines = process.stderr.splitlines()
    failed = sorted(line for line in lines if line.startswith(("ERROR: ", "FAIL: ")))
    summary = [line.split(" in ")[0] for line in lines if line.startswith(("Ran ", "OK", "FAILED"))]
    return failed, summary


@pytest.mark.parametrize("vendor", dbconfig.VENDORS)
def test_djangos_own_database_tests_pass(vendor: str, tmp_path: Path) -> None:
    """They pass on our ENGINE as on Django's own, in parallel: Django's runner
    forks workers that close inherited connections. If anything fails, the
    plain ENGINE runs the same way, forks and all, and must fail alike: a
    failure of this environment (not of ours) shows up on both."""
    require_server(vendor)
    ours = run_suite(vendor, "forksafe", tmp_path, parallel="auto")
    if ours.returncode == 0:
        assert outcome(ours)[1][-1].startswith("OK")
        return
    plain = run_suite(vendor, "plain", tmp_path, parallel="auto")
    assert outcome(plain)[1], plain.stderr[-3000:]  # Django's runner got to the end.
    assert outcome(ours) == outcome(plain), ours.stderr[-5000:]
