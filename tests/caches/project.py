"""
A small app on a memcached cache, for the programs that fork it: gunicorn
(``tests.caches.project:application``) and a Celery prefork worker
(``-A tests.caches.project``). FORKSAFE_CACHE_LIBRARY (pylibmc, pymemcache)
and FORKSAFE_CACHE_VARIANT (forksafe, plain) choose the BACKEND.

The process that loads it warms the cache (a set and a get, as an
AppConfig.ready() warm-up or a settings check does): with gunicorn
--preload, the master; with Celery, the main process (worker_init), before
either forks. Each request or task then does set/get rounds with keys of its
own and says how many replies were wrong; sessions live in the cache.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import django
from django.conf import settings

from tests import dbconfig
from tests.caches import MEMCACHED, cache_entry, held_ports

LIBRARY = os.environ.get("FORKSAFE_CACHE_LIBRARY", "pylibmc")
VARIANT = os.environ.get("FORKSAFE_CACHE_VARIANT", "forksafe")
PREFIX = os.environ.get("FORKSAFE_CACHE_PREFIX", "forksafe-test")
BROKER = dbconfig.redis_url(11)

if not settings.configured:
    settings.configure(
        SECRET_KEY="not-secret",
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        DATABASES={},
        INSTALLED_APPS=["django.contrib.sessions"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        CACHES={"default": cache_entry(LIBRARY, VARIANT)},
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        USE_TZ=True,
    )
    django.setup()


def rounds(count: int) -> dict[str, Any]:
    """`count` set(key, key) / get(key), every reply checked."""
    from django.core.cache import cache

    wrong = errors = 0
    first_error = None
    for _ in range(count):
        key = f"{PREFIX}:{uuid.uuid4().hex}"
        try:
            cache.set(key, key)
            wrong += cache.get(key) != key
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    ports = sorted(held_ports(int(MEMCACHED.rpartition(":")[2])))
    return {"pid": os.getpid(), "wrong": wrong, "errors": errors, "first_error": first_error, "ports": ports}


def warm_up() -> None:
    from django.core.cache import cache

    cache.set(f"{PREFIX}:warm-up", "warm")
    assert cache.get(f"{PREFIX}:warm-up") == "warm"


# gunicorn ------------------------------------------------------------------


def check(request: Any) -> Any:
    """Rounds, and a counter in the session: it must go up by one per
    request of the same client (the cookie), whichever worker serves it."""
    from django.http import HttpResponse

    outcome = rounds(int(request.GET.get("n", "20")))
    try:
        outcome["visits"] = request.session.get("visits", 0) + 1
        request.session["visits"] = outcome["visits"]
    except Exception as exc:
        outcome["errors"] += 1
        outcome["first_error"] = outcome["first_error"] or f"session: {type(exc).__name__}: {exc}"
    return HttpResponse(json.dumps(outcome), content_type="application/json")


def _urlpatterns() -> list[Any]:
    from django.urls import path

    return [path("check/", check)]


urlpatterns = _urlpatterns()

if os.environ.get("FORKSAFE_CACHE_PROGRAM") == "gunicorn":
    from django.core.wsgi import get_wsgi_application

    warm_up()
    application = get_wsgi_application()


# Celery --------------------------------------------------------------------

if os.environ.get("FORKSAFE_CACHE_PROGRAM") == "celery":
    from celery import Celery
    from celery.signals import worker_init

    app = Celery("forksafe_caches", broker=BROKER, backend=BROKER)

    @worker_init.connect  # type: ignore[untyped-decorator,misc,unused-ignore]
    def warm_up_in_main_process(**kwargs: Any) -> None:
        warm_up()

    @app.task(name="forksafe_caches.rounds")  # type: ignore[untyped-decorator,misc,unused-ignore]
    def rounds_task(count: int) -> dict[str, Any]:
        return rounds(count)
