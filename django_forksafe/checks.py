"""System checks (manage.py check), registered by the app's AppConfig.ready()."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.checks import CheckMessage, Info, Warning
from django.db import connections

if TYPE_CHECKING:
    from django.core.cache.backends.memcached import BaseMemcachedCache


def check_engines(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every database ENGINE, and every memcached cache BACKEND, that is not
    fork-safe; and any ENGINE of ours that cannot be loaded."""
    return check_database_engines() + check_cache_backends()


def check_database_engines() -> list[CheckMessage]:
    from django_forksafe.backends import suggest_engine, why_not_loaded
    from django_forksafe.wrapper import ForkSafeMixin

    warnings: list[CheckMessage] = []
    for alias in connections:
        engine = connections.settings[alias]["ENGINE"]
        try:
            wrapper_class = type(connections[alias])
        except Exception as exc:
            # Django says so at the alias's first use; for our names, say it
            # here already. A warning: an alias never used works, as with
            # Django's ENGINE (say, where its driver is left out on purpose).
            if str(engine).startswith("django_forksafe."):
                warnings.append(
                    Warning(
                        f"Database {alias!r} uses ENGINE {engine!r}, which cannot be loaded: {why_not_loaded(exc)}",
                        obj=alias,
                        id="django_forksafe.W005",
                    )
                )
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


def memcached_caches() -> dict[str, tuple[str, type[BaseMemcachedCache]]]:
    """The caches whose BACKEND is a memcached one (fork-safe or not): its
    name and class, by alias."""
    from django.core.cache.backends.memcached import BaseMemcachedCache
    from django.utils.module_loading import import_string

    found = {}
    for alias, entry in getattr(settings, "CACHES", {}).items():
        backend = str(entry.get("BACKEND", ""))
        try:
            backend_class = import_string(backend)
        except ImportError:  # Django reports a BACKEND it cannot load.
            continue
        if isinstance(backend_class, type) and issubclass(backend_class, BaseMemcachedCache):
            found[alias] = (backend, backend_class)
    return found


def check_cache_backends() -> list[CheckMessage]:
    """A memcached BACKEND (pylibmc, pymemcache) whose client a child would share."""
    from django_forksafe.cache import ForkSafeMemcachedMixin, suggest_backend

    return [
        Warning(
            f"Cache {alias!r} uses BACKEND {backend!r}, which is not fork-safe: forked "
            "processes share its connections and read each other's values.",
            hint=f"Use BACKEND = {suggest_backend(backend)!r}.",
            obj=alias,
            id="django_forksafe.W004",
        )
        for alias, (backend, backend_class) in memcached_caches().items()
        if not issubclass(backend_class, ForkSafeMemcachedMixin)
    ]


def check_uwsgi(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    from django_forksafe.contrib.uwsgi_detection import HINT, hook_missing

    message = hook_missing()
    if message is None:
        return []
    return [Warning(message, hint=HINT, id="django_forksafe.W002")]


def check_mechanism(app_configs: Any = None, **kwargs: Any) -> list[Info]:
    """Said when the C extension is not in use (forksafe_check always says which is)."""
    from django_forksafe import detection

    if detection.NATIVE is not None:
        return []
    return [
        Info(
            f"django-forksafe runs in {detection.MECHANISM}.",
            hint="The C extension (built where a C compiler is found, on Linux and CPython) also "
            "silences inherited sockets inside fork() itself; DJANGO_FORKSAFE_NATIVE=0 turns it off.",
            id="django_forksafe.I001",
        )
    ]
