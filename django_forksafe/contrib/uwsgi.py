"""
uWSGI does not run Python's at-fork handlers in its workers (unless started
with --py-call-osafterfork). Importing this module, in the WSGI file or with
``--import django_forksafe.contrib.uwsgi``, registers a uWSGI post-fork hook
that invalidates the connections each worker inherits, before its first
request. Outside uWSGI, importing it does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from django_forksafe import registry

try:
    import uwsgi
except ImportError:  # Not running under uWSGI.
    uwsgi = None


def post_fork() -> None:
    registry.invalidate_if_forked()


def install() -> None:
    """Register post_fork, keeping any hook already registered."""
    if uwsgi is None:
        return
    previous: Callable[[], None] | None = getattr(uwsgi, "post_fork_hook", None)
    if getattr(previous, "forksafe", False):
        return

    def hook() -> None:
        post_fork()
        if previous is not None:
            previous()

    hook.forksafe = True  # type: ignore[attr-defined]  # For the system check.
    uwsgi.post_fork_hook = hook


install()
