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

from tests import dbconfig
from tests.test_hazards import ROOT

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
CACHE = Path(os.environ.get("FORKSAFE_DJANGO_SUITE_CACHE", Path(tempfile.gettempdir()) / "forksafe-django-suite"))


def django_tests() -> Path:
    version = django.__version__
    tests = CACHE / f"django-{version}" / "tests"
    if tests.is_dir():
        return tests
    CACHE.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--dest", str(CACHE), f"django=={version}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if download.returncode:
        message = f"cannot fetch Django {version}'s source distribution: {download.stderr[-500:]}"
        if dbconfig.in_ci():
            pytest.fail(message)
        pytest.skip(message)
    archive = next(CACHE.glob(f"[Dd]jango-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{archive.name[:-7]}/tests/")]
        tar.extractall(CACHE, members=members, filter="data")
    extracted = CACHE / archive.name[:-7]
    if extracted != tests.parent:
        extracted.rename(tests.parent)
    return tests


@pytest.mark.parametrize("vendor", dbconfig.VENDORS)
def test_djangos_own_database_tests_pass(vendor: str, tmp_path: Path) -> None:
    reason = dbconfig.unreachable_reason(vendor)
    if reason is not None:
        if dbconfig.in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    tests = django_tests()
    databases = {
        alias: dbconfig.database(
            vendor, **({} if vendor == "sqlite3" else {"TEST": {"NAME": f"test_django_suite_{alias}"}})
        )
        for alias in ("default", "other")
    }
    (tmp_path / "suite_settings.py").write_text(
        f"DATABASES = {databases!r}\n"
        "SECRET_KEY = 'django_tests_secret_key'\n"
        "PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']\n"
        "DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'\n"
        "USE_TZ = False\n"
    )
    process = subprocess.run(
        [sys.executable, "runtests.py", "--settings=suite_settings", "--noinput", *LABELS],
        cwd=tests,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    assert "\nOK" in process.stderr
