from __future__ import annotations

import os
import shutil
from pathlib import Path

import django
import pytest

import django_forksafe

# tox sets this: the suite must test the installed wheel, so that a packaging
# mistake (a module or data file left out) fails it.
if os.environ.get("FORKSAFE_TEST_INSTALLED") == "1":
    source = Path(__file__).resolve().parent.parent / "django_forksafe"
    installed = Path(django_forksafe.__file__).resolve().parent
    if installed == source:
        raise RuntimeError(
            f"django_forksafe was imported from the source tree ({source}), not from the "
            "installed package: run pytest's console script with --import-mode=append."
        )

# tox's djangoXY factors set this: a test dependency that caps Django must
# not quietly test another version than the environment's name says.
expected_django = os.environ.get("FORKSAFE_DJANGO_VERSION")
if expected_django and django.VERSION[:2] != tuple(map(int, expected_django.split("."))):
    raise RuntimeError(
        f"this environment is for Django {expected_django}, but Django {django.get_version()} "
        "is installed: a test dependency moved it (see constrain_package_deps in tox.ini)."
    )


# The suite's PostgreSQL sessions are plaintext, as the hazards' controls
# expect (libpq would take TLS where the server offers it, as Debian's
# clusters do); the TLS tests ask for it (sslmode) from servers of their own.
# Set here, it reaches the programs the tests start too.
os.environ.setdefault("PGSSLMODE", "disable")


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests import dbconfig

    for vendor in dbconfig.SERVER_VENDORS:
        if dbconfig.unreachable_reason(vendor) is None:
            try:
                dbconfig.create_test_database(vendor)
            except RuntimeError as error:  # Said plainly, not as pytest's INTERNALERROR.
                pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_report_header() -> list[str]:
    from tests import dbconfig
    from tests.programs import SEED

    return [
        f"django-forksafe from {django_forksafe.__file__}",
        f"random load seed: FORKSAFE_SEED={SEED}",
        f"test database: {dbconfig.test_database()}",
    ]


@pytest.fixture
def tcpdump() -> None:
    """tcpdump, run as root, for the byte-level tests (tests/wire.py)."""
    if shutil.which("tcpdump") is None or os.geteuid() != 0:
        from tests.utils import skip_or_fail

        skip_or_fail("needs tcpdump (make test installs it) and root to capture")
