from __future__ import annotations

import os
from pathlib import Path

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


def pytest_report_header() -> list[str]:
    from tests.test_servers import SEED

    return [
        f"django-forksafe from {django_forksafe.__file__}",
        f"random load seed: FORKSAFE_SEED={SEED}",
    ]
