"""django-forksafe's settings, read and checked in one place."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def strict() -> bool:
    """FORKSAFE_STRICT: check the process ID on every connection checkout."""
    problem = strict_problem()
    if problem is not None:
        raise ImproperlyConfigured(problem)
    return getattr(settings, "FORKSAFE_STRICT", False) is True


def strict_problem() -> str | None:
    """What is wrong with FORKSAFE_STRICT, if anything (for the system check too)."""
    value = getattr(settings, "FORKSAFE_STRICT", False)
    if isinstance(value, bool):
        return None
    return f"FORKSAFE_STRICT must be True or False, not {value!r} (of type {type(value).__name__})."
