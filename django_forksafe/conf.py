"""django-forksafe's settings, read and checked in one place."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def strict() -> bool:
    """FORKSAFE_STRICT: check the process ID on every connection checkout."""
    value = getattr(settings, "FORKSAFE_STRICT", False)
    if not isinstance(value, bool):
        raise ImproperlyConfigured(
            f"FORKSAFE_STRICT must be True or False, not {value!r} "
            f"(of type {type(value).__name__})."
        )
    return value
