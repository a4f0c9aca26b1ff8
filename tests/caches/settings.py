"""Settings for manage.py-style runs on one cache (forksafe_check, the
system checks): FORKSAFE_CACHE_LIBRARY and FORKSAFE_CACHE_VARIANT as for
tests.caches.project."""

from __future__ import annotations

import os

from tests.caches import cache_entry

SECRET_KEY = "not-secret"
USE_TZ = True
INSTALLED_APPS = ["django_forksafe"]
DATABASES: dict[str, dict[str, str]] = {}
CACHES = {
    "default": cache_entry(
        os.environ.get("FORKSAFE_CACHE_LIBRARY", "pylibmc"), os.environ.get("FORKSAFE_CACHE_VARIANT", "forksafe")
    ),
    "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
