"""
gunicorn: with --preload, forks are handled by the at-fork handler and
nothing needs configuring. To say so explicitly, in gunicorn.conf.py::

    from django_forksafe.contrib.gunicorn import post_fork
"""

from __future__ import annotations

from typing import Any

from django_forksafe import registry


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn's post_fork hook: invalidate inherited connections now."""
    registry.invalidate_if_forked()
