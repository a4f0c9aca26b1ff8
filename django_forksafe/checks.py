"""System checks (manage.py check), registered when the app is installed."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.db import connections


@register()  # Not Tags.database: it reads settings only, and should run by default.
def check_engines(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    from django_forksafe.management.commands.forksafe_check import suggest_engine
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
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    value = getattr(settings, "FORKSAFE_STRICT", False)
    if isinstance(value, bool):
        return []
    return [
        Error(
            f"FORKSAFE_STRICT must be True or False, not {value!r} (of type {type(value).__name__}).",
            hint="Set FORKSAFE_STRICT = True to check the process ID on every connection checkout.",
            id="django_forksafe.E001",
        )
    ]


@register()
def check_uwsgi(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    try:
        import uwsgi
    except ImportError:  # Not inside a uWSGI process.
        return []
    # Not django_forksafe.contrib.uwsgi.installed(): importing that module installs the hook.
    hook = getattr(uwsgi, "post_fork_hook", None)
    options = getattr(uwsgi, "opt", {})
    if getattr(hook, "forksafe", False) or options.get("py-call-osafterfork") or options.get("lazy-apps"):
        return []
    return [
        Warning(
            "Running under uWSGI, which does not run Python's at-fork handlers in its "
            "workers, without django-forksafe's post-fork hook.",
            hint="Import django_forksafe.contrib.uwsgi in your WSGI module, or start uWSGI "
            "with --import django_forksafe.contrib.uwsgi.",
            id="django_forksafe.W002",
        )
    ]
