"""
Whether this process runs under uWSGI, and whether uWSGI will call
django-forksafe's post-fork hook (django_forksafe.contrib.uwsgi) in the
children it forks: for system check W002. Importing this module installs
nothing.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

HINT = (
    "Import django_forksafe.contrib.uwsgi in your WSGI module (after setting your own "
    "uwsgi.post_fork_hook, if any), or start uWSGI with --import django_forksafe.contrib.uwsgi."
)


def embedded_uwsgi() -> ModuleType | None:
    """uWSGI's own module, which uWSGI puts in sys.modules before it loads
    the application; never a file of that name on sys.path (a project's
    uwsgi.py or uwsgi/ folder), which is not imported here."""
    module = sys.modules.get("uwsgi")
    if module is None or getattr(module, "__file__", None) is not None:
        return None
    return module


def running_under_uwsgi() -> bool:
    return embedded_uwsgi() is not None


def postfork_chain() -> list[Any] | None:
    """uwsgidecorators' list of @postfork hooks, which its post_fork_hook
    runs: empty if it is not imported, None if it keeps them elsewhere."""
    decorators = sys.modules.get("uwsgidecorators")
    if decorators is None:
        return []
    chain = getattr(decorators, "postfork_chain", None)
    return chain if isinstance(chain, list) else None


def hook_installed(uwsgi: Any) -> bool:
    """Whether uWSGI will call our post_fork in its children (as its
    post_fork_hook, or in uwsgidecorators' chain)."""
    hooks = [getattr(uwsgi, "post_fork_hook", None), *(postfork_chain() or [])]
    return any(getattr(hook, "forksafe", False) for hook in hooks)


def hook_missing() -> str | None:
    """Why this uWSGI process's children are not covered at the fork itself,
    if they are not."""
    uwsgi = embedded_uwsgi()
    if uwsgi is None:
        return None
    options = getattr(uwsgi, "opt", {})
    if hook_installed(uwsgi):
        return None
    if options.get("py-call-osafterfork") or options.get("lazy-apps") or options.get("lazy"):
        return None
    if postfork_chain() is None:
        return (
            "Running under uWSGI with a uwsgidecorators that no longer keeps its @postfork hooks "
            "in postfork_chain: django-forksafe cannot tell whether its post-fork hook will run."
        )
    return (
        "Running under uWSGI, which does not run Python's at-fork handlers in its children, "
        "without django-forksafe's post-fork hook: inherited connections are invalidated at "
        "each child's first checkout, not at the fork."
    )
