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
from django_forksafe.checks import uwsgi_hook_installed

try:
    import uwsgi
except ImportError:  # Not running under uWSGI.
    uwsgi = None


def post_fork() -> None:
    registry.invalidate_if_forked()


post_fork.forksafe = True  # type: ignore[attr-defined]  # See uwsgi_hook_installed().


def install() -> None:
    """Register post_fork, alongside any hook already registered."""
    if uwsgi is None or uwsgi_hook_installed(uwsgi):
        return
    try:
        # uwsgidecorators replaces uwsgi.post_fork_hook with its own chain
        # when imported: join the chain, so that a later import keeps us.
        import uwsgidecorators
    except ImportError:
        uwsgidecorators = None
    if uwsgidecorators is not None:
        uwsgidecorators.postfork_chain.append(post_fork)
        return
    previous: Callable[[], None] | None = getattr(uwsgi, "post_fork_hook", None)

    def hook() -> None:
        post_fork()
        if previous is not None:
            previous()

    hook.forksafe = True  # type: ignore[attr-defined]
    uwsgi.post_fork_hook = hook


install()
