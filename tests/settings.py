"""Settings for the pytest-django suite: every vendor whose server answers
(in CI, every vendor: a missing server must fail, not skip)."""

from __future__ import annotations

import os
import tempfile

from tests import dbconfig

SECRET_KEY = "not-secret"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "tests.testapp"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

DATABASES = {
    "default": dbconfig.database(
        "sqlite3",
        NAME=os.path.join(tempfile.gettempdir(), f"forksafe-{os.getpid()}.sqlite3"),
        TEST={"NAME": os.path.join(tempfile.gettempdir(), f"forksafe-test-{os.getpid()}.sqlite3")},
    ),
}
for vendor in dbconfig.SERVER_VENDORS:
    if dbconfig.in_ci() or dbconfig.unreachable_reason(vendor) is None:
        DATABASES[vendor] = dbconfig.database(vendor)
