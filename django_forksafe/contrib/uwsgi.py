"""
uWSGI does not run Python's at-fork handlers in its workers, mules and
spooler (unless started with --py-call-osafterfork). Importing this module
adds django-forksafe to uWSGI's post-fork hook, so that each child
invalidates the connections it inherited right after the fork (without it,
they are invalidated at the child's first checkout anyway). Import it in the
WSGI file, or start uWSGI with ``--import django_forksafe.contrib.uwsgi``.
Outside uWSGI, importing it does nothing.

It keeps whatever the app set, before or after it is imported:
``uwsgi.post_fork_hook`` (called after ours), ``uwsgi.spooler`` and
``uwsgi.mule_msg_hook``, and uwsgidecorators' ``@spool``, ``@mulefunc`` and
``@postfork``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from django_forksafe import registry
from django_forksafe.contrib.uwsgi_detection import embedded_uwsgi, hook_installed

uwsgi = embedded_uwsgi()  # None outside uWSGI.

# What importing uwsgidecorators assigns, replacing what the app set.
UWSGIDECORATORS_SETS = ("spooler", "post_fork_hook", "mule_msg_hook")


def post_fork() -> None:
    registry.invalidate_if_forked()


post_fork.forksafe = True  # type: ignore[attr-defined]  # See hook_installed().


def install() -> None:
    """Chain post_fork before the uwsgi.post_fork_hook already set, if any."""
    if uwsgi is None or hook_installed(uwsgi):
        return
    import_uwsgidecorators()
    previous: Callable[[], None] | None = getattr(uwsgi, "post_fork_hook", None)

    def hook() -> None:
        post_fork()
        if previous is not None:
            previous()

    hook.forksafe = True  # type: ignore[attr-defined]
    uwsgi.post_fork_hook = hook  # type: ignore[attr-defined]  # uWSGI's module, made at run time.


def import_uwsgidecorators() -> None:
    """Import uwsgidecorators now, if the app has not, keeping what the app
    set on the uwsgi module.

    Its first import replaces uwsgi.spooler, uwsgi.post_fork_hook and
    uwsgi.mule_msg_hook with its own dispatchers: imported later by the app,
    it would drop our hook; imported here as is, after the app set its own,
    it would drop the app's. Later imports find it in sys.modules and change
    nothing."""
    if "uwsgidecorators" in sys.modules:
        return
    saved = {name: getattr(uwsgi, name) for name in UWSGIDECORATORS_SETS if hasattr(uwsgi, name)}
    try:
        import uwsgidecorators  # noqa: F401
    except Exception:
        pass
    finally:
        for name, value in saved.items():
            setattr(uwsgi, name, value)


install()
