"""
The test-suite trap: a fork inside a test's transaction (Django's TestCase,
pytest-django's db fixture). Real test runs of testproject/forkintests/, by
Django's runner and by pytest-django, in subprocesses: the child's view of
the test's rows both ways, and ForkInTestTransactionWarning in the parent,
once per test inside TestCase / db and never inside TransactionTestCase /
transaction=True.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests import dbconfig
from tests.programs import PROJECT, project_env, require

# Not the suite's database: pytest-django's test_<that> may be in use.
TEST_DB = f"{dbconfig.test_database()}_trap"

# mysql, postgresql, and SQLite with its test database in a file or in memory
# (Django's default for SQLite).
DATABASES = [*dbconfig.SERVER_VENDORS, "sqlite3-file", "sqlite3-memory"]

WARNING = "ForkInTestTransactionWarning"
REFUSED = "OperationalError: this process was forked while its parent held a transaction"


def env_for(database: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    vendor = database.partition("-")[0]
    env = {
        "FORKSAFE_REPORT": str(tmp_path / "report.jsonl"),
        "FORKSAFE_MYSQL_NAME": TEST_DB,
        "FORKSAFE_PG_NAME": TEST_DB,
        "FORKSAFE_SQLITE_NAME": str(tmp_path / "db.sqlite3"),
    }
    if database == "sqlite3-file":
        env["FORKSAFE_SQLITE_TEST_NAME"] = str(tmp_path / "test.sqlite3")
    return vendor, env


def reports(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """What each test of the run recorded, by the test's name's last part."""
    lines = (tmp_path / "report.jsonl").read_text().splitlines()
    return {re.split(r"[.:]", entry["test"])[-1]: entry for entry in map(json.loads, lines)}


def run_django_tests(database: str, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """manage.py test forkintests.django_tests, with `extra` in its environment."""
    vendor, env = env_for(database, tmp_path)
    return subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), "test", "forkintests.django_tests", "--noinput"],
        env=project_env(vendor, "forksafe", **env, **extra), capture_output=True, text=True, timeout=300,
    )


def django_runner(database: str, tmp_path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The reports of run_django_tests(), and the warnings Django's runner
    shows (Python's own display, on stderr)."""
    process = run_django_tests(database, tmp_path)
    assert process.returncode == 0, process.stderr
    shown = [line for line in process.stderr.splitlines() if f"{WARNING}:" in line]
    return reports(tmp_path), shown


def run_pytest(database: str, tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """pytest on forkintests/pytest_tests.py, with the plugin that logs each
    warning pytest records to FORKSAFE_WARNINGS."""
    vendor, env = env_for(database, tmp_path)
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")  # Not the repository's setup.cfg.
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-c", str(ini), "-p", "no:cacheprovider",
            "-p", "forkintests.pytest_plugin", *options, str(PROJECT / "forkintests" / "pytest_tests.py"),
        ],
        env={
            **project_env(vendor, "forksafe", **env),
            "FORKSAFE_WARNINGS": str(tmp_path / "warnings.jsonl"),
            "PYTEST_ADDOPTS": "",
        },
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


def pytest_django(database: str, tmp_path: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """The reports of run_pytest(), and the warnings pytest recorded, each with its test."""
    process = run_pytest(database, tmp_path)
    assert process.returncode == 0, process.stdout + process.stderr
    log = tmp_path / "warnings.jsonl"
    recorded = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return reports(tmp_path), [entry for entry in recorded if entry["category"] == WARNING]


def assert_child_view(database: str, in_test_transaction: bool, first: dict[str, Any], second: dict[str, Any]) -> None:
    """What a child forked in the test saw and could do: the first child's
    row looked for by the second child tells whether it was committed."""
    assert "error" not in first and "error" not in second, (first, second)
    if database == "sqlite3-memory":
        # A private copy of the database as it was at the fork, either way.
        assert first["saw_test_row"] == 1 and first["write"] == "ok"
        assert second["saw_earlier_child_row"] == 0
        return
    if database != "sqlite3-file":
        assert first["session"] != first["parent_session"]  # Never the test's session.
    if not in_test_transaction:
        assert first["saw_test_row"] == 1 and first["write"] == "ok"
        assert second["saw_earlier_child_row"] == 1
    elif database == "sqlite3-file":
        assert first["saw_test_row"] == 0
        assert first["write"].startswith(REFUSED) and second["write"].startswith(REFUSED)
        assert second["saw_earlier_child_row"] == 0
    else:
        # Its own session: not the test's rows, and its writes committed for
        # real (another child sees them), outliving the test's rollback.
        assert first["saw_test_row"] == 0 and first["write"] == "ok"
        assert second["saw_earlier_child_row"] == 1


def require_database(database: str) -> None:
    if database in dbconfig.SERVER_VENDORS:
        require(database)


@pytest.mark.parametrize("database", DATABASES)
def test_django_runner(database: str, tmp_path: Path) -> None:
    require_database(database)
    seen, shown = django_runner(database, tmp_path)
    # The child's view, both ways.
    assert_child_view(database, True, seen["test_two_forks"]["first"], seen["test_two_forks"]["second"])
    if database != "sqlite3-memory":
        assert seen["test_another_fork"]["first"]["saw_test_row"] == 0  # setUpTestData's row.
    assert_child_view(database, False, seen["test_fork"]["first"], seen["test_fork"]["second"])
    # One warning per TestCase test, two forks or one; none in TransactionTestCase.
    assert len(shown) == 2, shown
    assert sum("ForkInTestCase.test_two_forks" in line for line in shown) == 1
    assert sum("ForkInTestCase.test_another_fork" in line for line in shown) == 1
    assert "ForkInTransactionTestCase" not in "".join(shown)
    assert_message(database, shown[0])


@pytest.mark.parametrize("database", DATABASES)
def test_pytest_django(database: str, tmp_path: Path) -> None:
    require_database(database)
    seen, recorded = pytest_django(database, tmp_path)
    assert_child_view(database, True, seen["test_two_forks"]["first"], seen["test_two_forks"]["second"])
    assert_child_view(database, False, seen["test_fork_with_transaction"]["first"],
                      seen["test_fork_with_transaction"]["second"])
    # One warning per test with the db fixture, two forks or one; none with transaction=True.
    assert sorted(entry["test"].rpartition("::")[2] for entry in recorded) == ["test_another_fork", "test_two_forks"]
    assert_message(database, recorded[0]["message"])


def assert_message(database: str, text: str) -> None:
    """What the warning says: where, what the child gets, and the fix."""
    assert "forking inside a test's transaction" in text and "on 'default' the child" in text
    assert {
        "sqlite3-memory": "private copy",
        "sqlite3-file": "writes to that file are refused",
    }.get(database, "committed for real") in text
    assert "TransactionTestCase" in text and "django_db(transaction=True)" in text


def test_warning_is_public_and_filterable(tmp_path: Path) -> None:
    """The class is exported. Made an error by a warnings filter, it fails
    each test that forks in its transaction (at the test's end: an at-fork
    hook cannot raise); ignored, it says nothing."""
    import django_forksafe

    assert issubclass(django_forksafe.ForkInTestTransactionWarning, RuntimeWarning)
    # testproject's settings: warnings.filterwarnings(<action>, category=ForkInTestTransactionWarning).
    failed = run_django_tests("sqlite3-file", tmp_path, FORKSAFE_FORK_WARNING="error")
    assert failed.returncode == 1 and "FAILED (errors=2)" in failed.stderr, failed.stderr
    assert re.findall(r"^ERROR: (\w+)", failed.stderr, re.MULTILINE) == ["test_another_fork", "test_two_forks"]
    assert f"django_forksafe.testing.{WARNING}: This process is forking" in failed.stderr
    ignored = run_django_tests("sqlite3-file", tmp_path, FORKSAFE_FORK_WARNING="ignore")
    assert ignored.returncode == 0 and WARNING not in ignored.stderr, ignored.stderr


def test_warning_as_error_in_pytest(tmp_path: Path) -> None:
    """pytest's -W error::... raises it in the at-fork hook, where Python
    reports it as an exception it could not raise: pytest's
    PytestUnraisableExceptionWarning, an error too with -W error:: for it."""
    process = run_pytest(
        "sqlite3-file", tmp_path, f"-Werror::django_forksafe.{WARNING}",
        "-Werror::pytest.PytestUnraisableExceptionWarning",
    )
    outcome = process.stdout + process.stderr
    assert "2 failed, 1 passed" in outcome, outcome
    assert re.findall(r"^FAILED \S*::(\w+)", outcome, re.MULTILINE) == ["test_two_forks", "test_another_fork"]


def test_no_warning_outside_tests() -> None:
    """A fork inside an atomic block of the program's own (not a test
    case's) warns nothing."""
    code = (
        "import os, sys, warnings\n"
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(DATABASES={'default': {'ENGINE': 'django_forksafe.backends.sqlite3', "
        f"'NAME': {os.path.join(tempfile.mkdtemp(), 'db.sqlite3')!r}}}}})\n"
        "django.setup()\n"
        "import django.test  # Django's test cases loaded, as in a test run.\n"
        "from django.db import connection, transaction\n"
        "warnings.simplefilter('error')\n"
        "with transaction.atomic():\n"
        "    connection.cursor().execute('CREATE TABLE t (x int)')\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "print('forked')\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], env=project_env("sqlite3", "forksafe"), capture_output=True, text=True,
        timeout=60,
    )
    assert process.stdout.strip() == "forked" and WARNING not in process.stderr, process.stderr
