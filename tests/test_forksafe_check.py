"""manage.py forksafe_check and the system checks, on testproject/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from django_forksafe.checks import check_mechanism
from django_forksafe.hazards import HAZARDS
from tests import IMPORT_PATH, dbconfig
from tests.programs import PROJECT, free_port, manage, prepare, project_env, require, with_engines
from tests.utils import require_native

# What Django's plain ENGINE leaves open for certain, per vendor.
DETERMINISTIC = {
    "mysql": {
        "child closes", "child exits", "fork inside atomic", "other thread's connection",
        "child exits, libc fork", "fork inside atomic, libc fork",
    },
    "postgresql": {"child closes", "fork inside atomic", "fork inside atomic, libc fork"},
    "sqlite3": {"child closes", "concurrent use", "fork inside atomic", "fork inside atomic, libc fork"},
}


def check_json(vendor: str, engine: str) -> tuple[int, dict[str, Any]]:
    require(vendor)
    prepare(vendor)
    process = manage(vendor, engine, "forksafe_check", "--format", "json", "--timeout", "10", check=False, timeout=600)
    (result,) = json.loads(process.stdout)
    return process.returncode, result


@pytest.mark.parametrize("vendor", dbconfig.VENDORS)
def test_forksafe_engine_closes_every_hazard(vendor: str) -> None:
    status, result = check_json(vendor, "forksafe")
    assert status == 0
    assert result["forksafe"] and result["reachable"]
    assert result["fork_detection"] == "MADV_WIPEONFORK"  # This kernel supports it.
    # testproject sets no start method: this Python's default.
    assert result["multiprocessing_start_method"] == ("forkserver" if sys.version_info >= (3, 14) else "fork")
    assert [hazard["hazard"] for hazard in result["hazards"] if hazard["safe"]] == list(HAZARDS), result


@pytest.mark.parametrize("vendor", dbconfig.VENDORS)
def test_plain_engine_hazards_reported_open(vendor: str) -> None:
    status, result = check_json(vendor, "plain")
    assert status == 3
    assert not result["forksafe"]
    open_hazards = {hazard["hazard"] for hazard in result["hazards"] if not hazard["safe"]}
    assert DETERMINISTIC[vendor] <= open_hazards, result


def test_table_output_suggests_engine() -> None:
    require("sqlite3")
    prepare("sqlite3")
    process = manage("sqlite3", "plain", "forksafe_check", "--timeout", "10", check=False, timeout=600)
    assert process.returncode == 3
    assert "CommandError: Fork hazards open on default." in process.stderr
    assert "child closes" in process.stdout and "OPEN" in process.stdout
    assert "-> use ENGINE = 'django_forksafe.backends.sqlite3'" in process.stdout
    method = "forkserver" if sys.version_info >= (3, 14) else "fork"
    assert f"multiprocessing start method: {method} (multiprocessing.Pool()" in process.stdout


def test_unreachable_database_reported_not_raised() -> None:
    process = manage(
        "postgresql", "forksafe", "forksafe_check", "--format", "json", check=False, timeout=600,
        FORKSAFE_PG_PORT=str(free_port()),
    )
    assert process.returncode == 4
    (result,) = json.loads(process.stdout)
    assert result["reachable"] is False
    assert "Connection refused" in result["error"] or "connection" in result["error"].lower()
    assert "Traceback" not in process.stderr


def test_call_command_raises_command_error_with_the_exit_status() -> None:
    # call_command() callers catch CommandError; the command never sys.exit()s.
    process = subprocess.run(
        [sys.executable, "-c", (
            "import django; django.setup()\n"
            "from django.core.management import call_command, CommandError\n"
            "try:\n    call_command('forksafe_check', '--timeout', '10')\n"
            "except CommandError as error:\n    print('returncode', error.returncode)\n"
        )],
        env=project_env("sqlite3", "plain"), capture_output=True, text=True, timeout=120, cwd=PROJECT,
    )
    assert "returncode 3" in process.stdout, process.stderr


@pytest.mark.parametrize("engine", ["forksafe", "plain"])
def test_in_memory_sqlite_has_nothing_to_check(engine: str) -> None:
    # Every child works on a private copy: no hazard, on either ENGINE.
    process = manage(
        "sqlite3", engine, "forksafe_check", "--format", "json", check=False, timeout=600,
        FORKSAFE_SQLITE_NAME=":memory:",
    )
    assert process.returncode == 0, process.stderr
    (result,) = json.loads(process.stdout)
    assert result["in_memory"] is True and result["hazards"] == []
    table = manage("sqlite3", engine, "forksafe_check", FORKSAFE_SQLITE_NAME=":memory:")
    assert "in memory: nothing to check" in table.stdout and "-> use" not in table.stdout


def test_unknown_engine_reported_as_such_with_the_engines_there_are() -> None:
    process = with_engines({"default": "django_forksafe.backends.nosuch"}, (
        "from django.core.management import call_command, CommandError\n"
        "try:\n    call_command('forksafe_check', '--format', 'json')\n"
        "except CommandError as error:\n    print(f'returncode {error.returncode}: {error}')\n"
    ))
    output, status = process.stdout.rsplit("\n", 2)[:2]
    assert status == "returncode 1: The ENGINE of default cannot be loaded.", process.stdout + process.stderr
    (result,) = json.loads(output)
    assert result["misconfigured"] is True
    assert "'django_forksafe.backends.nosuch' is not a django-forksafe ENGINE" in result["error"]
    assert "'django_forksafe.backends.postgresql'" in result["error"]


def test_unknown_alias() -> None:
    process = manage("sqlite3", "forksafe", "forksafe_check", "--database", "nosuch", check=False, timeout=600)
    assert process.returncode == 1
    assert "Unknown database alias 'nosuch'. Configured: default." in process.stderr


def test_bad_arguments() -> None:
    # argparse's usage error, as docs/api.rst says: 2, not CommandError's 1.
    process = manage("sqlite3", "forksafe", "forksafe_check", "--format", "xml", check=False, timeout=600)
    assert process.returncode == 2
    assert "argument --format: invalid choice: 'xml'" in process.stderr


def test_system_check_warns_about_plain_engine() -> None:
    require_native()  # Else I001 says the extension is not in use.
    plain = manage("sqlite3", "plain", "check", check=False, timeout=600)
    assert "(django_forksafe.W001) Database 'default' uses ENGINE 'django.db.backends.sqlite3'" in plain.stderr
    assert "HINT: Use ENGINE = 'django_forksafe.backends.sqlite3'." in plain.stderr
    forksafe = manage("sqlite3", "forksafe", "check", check=False, timeout=600)
    assert forksafe.returncode == 0
    assert "django_forksafe" not in forksafe.stderr + forksafe.stdout


def test_info_check_says_when_the_c_extension_is_not_in_use() -> None:
    from django_forksafe import detection

    if detection.NATIVE is not None:
        assert check_mechanism() == []
    else:
        (info,) = check_mechanism()
        assert info.id == "django_forksafe.I001"
        assert "pure Python" in info.msg


def test_mechanism_follows_the_switch() -> None:
    require_native()
    # What forksafe_check prints as "Mechanism:".
    for native, expected in (("1", "C extension"), ("0", "pure Python")):
        process = subprocess.run(
            [sys.executable, "-c", "from django_forksafe import detection; print(detection.MECHANISM)"],
            capture_output=True,
            text=True,
            cwd=IMPORT_PATH,
            env={**os.environ, "PYTHONPATH": IMPORT_PATH, "DJANGO_FORKSAFE_NATIVE": native},
            check=True,
        )
        assert process.stdout.startswith(expected)
