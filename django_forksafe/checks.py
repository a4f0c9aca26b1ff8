"""System checks (manage.py check), registered when the app is installed."""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.checks import Warning, register
from django.db import connections


@register()  # Not Tags.database: it reads settings only, and should run by default.
def check_engines(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    from django_forksafe.backends import suggest_engine
    from django_forksafe.wrapper import ForkSafeMixin

    warnings = []
    for alias in connections:
        engine = connections.settings[alias]["ENGINE"]
        try:
            wrapper_class = type(connections[alias])
        except Exception:  # Django reports an ENGINE it cannot load.
            continue
        if not issubclass(wrapper_class, ForkSafeMixin) and engine != "django.db.backends.dummy":
            warnings.append(
                Warning(
                    f"Database {alias!r} uses ENGINE {engine!r}, which is not fork-safe.",
                    hint=f"Use ENGINE = {suggest_engine(engine)!r}.",
                    obj=alias,
                    id="django_forksafe.W001",
                )
            )
    return warnings


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    if not hasattr(settings, "FORKSAFE_STRICT"):
        return []
    return [
        Warning(
            "FORKSAFE_STRICT has no effect: every connection checkout notices a fork, "
            "whatever its kind, without a system call.",
            hint="Remove FORKSAFE_STRICT from your settings.",
            id="django_forksafe.W003",
        )
    ]


@register()
def check_uwsgi(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    message = uwsgi_without_hook()
    if message is None:
        return []
    return [Warning(message, hint=UWSGI_HINT, id="django_forksafe.W002")]


UWSGI_HINT = (
    "Import django_forksafe.contrib.uwsgi in your WSGI module, or start uWSGI "
    "with --import django_forksafe.contrib.uwsgi."
)


def uwsgi_without_hook() -> str | None:
    """Why this uWSGI process's workers are not covered at fork, if they are not."""
    if "uwsgi" not in sys.modules:
        try:
            import uwsgi  # Importable only inside a uWSGI process.
        except ImportError:
            return None
    uwsgi = sys.modules["uwsgi"]
    options = getattr(uwsgi, "opt", {})
    if uwsgi_hook_installed(uwsgi):
        return None
    if options.get("py-call-osafterfork") or options.get("lazy-apps") or options.get("lazy"):
        return None
    return (
        "Running under uWSGI, which does not run Python's at-fork handlers in its "
        "workers, without django-forksafe's post-fork hook."
    )


def uwsgi_hook_installed(uwsgi: Any) -> bool:
    """Whether uWSGI will call django_forksafe.contrib.uwsgi.post_fork in its
    workers (as its post_fork_hook, or in uwsgidecorators' chain)."""
    chain: list[Any] = getattr(sys.modules.get("uwsgidecorators"), "postfork_chain", [])
    hooks = [getattr(uwsgi, "post_fork_hook", None), *chain]
    return any(getattr(hook, "forksafe", False) for hook in hooks)
