"""
A small real project on the forksafe ENGINEs.

FORKSAFE_DB: sqlite3 (default), mysql or postgresql; servers are configured
by FORKSAFE_MYSQL_* / FORKSAFE_PG_* (HOST, PORT, USER, PASSWORD, NAME; by
default tests/machine/setup.sh's role forksafe, password forksafe);
SQLite's file is FORKSAFE_SQLITE_NAME (default: testproject/db.sqlite3), and
its test database FORKSAFE_SQLITE_TEST_NAME (default: in memory).
FORKSAFE_ENGINE: forksafe (default) or plain, Django's own ENGINE.
django-rq and huey are used when installed (Redis on 127.0.0.1, port
FORKSAFE_REDIS_PORT, default 6379): the queue is named by FORKSAFE_RQ_QUEUE /
FORKSAFE_HUEY_NAME.
django-q2 is used when installed (its ORM broker, on the database): the
cluster and its queue are named by FORKSAFE_Q_NAME, and its workers are
recycled after FORKSAFE_Q_RECYCLE tasks.
FORKSAFE_PG_POOL=1: Django's connection pool for postgresql (psycopg_pool).
FORKSAFE_FORK_WARNING: a warnings action (error, ignore) for
django_forksafe.ForkInTestTransactionWarning.
FORKSAFE_CACHE=db: Django's database cache (table forksafe_cache, made by
createcachetable), which django-q2's sentinel writes its status to.
"""

from __future__ import annotations

import os
import warnings
from importlib.util import find_spec
from pathlib import Path

from django_forksafe import ForkInTestTransactionWarning

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "testproject-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "testproject.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# FORKSAFE_APP=0: the ENGINE alone, without the app (its checks and its uWSGI hook).
INSTALLED_APPS = ["django_forksafe", "shop"] if os.environ.get("FORKSAFE_APP", "1") == "1" else ["shop"]
MIDDLEWARE = ["django_forksafe.middleware.ForkSafeMiddleware"]

REDIS = f"redis://127.0.0.1:{os.environ.get('FORKSAFE_REDIS_PORT', '6379')}"
CELERY_BROKER_URL = os.environ.get("FORKSAFE_CELERY_BROKER", f"{REDIS}/15")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL

if find_spec("django_rq"):
    INSTALLED_APPS.append("django_rq")
    RQ_QUEUES = {os.environ.get("FORKSAFE_RQ_QUEUE", "default"): {"URL": f"{REDIS}/14"}}

if find_spec("huey"):
    INSTALLED_APPS.append("huey.contrib.djhuey")
    HUEY = {
        "huey_class": "huey.RedisHuey",
        "name": os.environ.get("FORKSAFE_HUEY_NAME", "testproject"),
        "url": f"{REDIS}/13",
        "immediate": False,
        "results": True,
    }

if find_spec("django_q"):
    INSTALLED_APPS.append("django_q")
    Q_CLUSTER = {
        "name": os.environ.get("FORKSAFE_Q_NAME", "testproject"),
        "orm": "default",
        "workers": 3,
        "recycle": int(os.environ.get("FORKSAFE_Q_RECYCLE", "5")),
        "timeout": 20,
        "retry": 60,
        "max_attempts": 1,
        "catch_up": False,
        "scheduler": False,
    }

if action := os.environ.get("FORKSAFE_FORK_WARNING"):
    warnings.filterwarnings(action, category=ForkInTestTransactionWarning)  # type: ignore[arg-type]

if os.environ.get("FORKSAFE_CACHE") == "db":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "forksafe_cache"}}

_vendor = os.environ.get("FORKSAFE_DB", "sqlite3")
_package = {
    "forksafe": "django_forksafe.backends",
    "plain": "django.db.backends",
}[os.environ.get("FORKSAFE_ENGINE", "forksafe")]
_prefix = {"mysql": "FORKSAFE_MYSQL_", "postgresql": "FORKSAFE_PG_"}.get(_vendor, "")
_defaults = {
    "mysql": {"HOST": "127.0.0.1", "PORT": "3306", "USER": "forksafe", "PASSWORD": "forksafe", "NAME": "test"},
    "postgresql": {"HOST": "127.0.0.1", "PORT": "5432", "USER": "forksafe", "PASSWORD": "forksafe", "NAME": "test"},
}.get(_vendor, {"NAME": os.environ.get("FORKSAFE_SQLITE_NAME", str(BASE_DIR / "db.sqlite3"))})

DATABASES = {
    "default": {
        "ENGINE": f"{_package}.{_vendor}",
        "CONN_MAX_AGE": int(os.environ.get("FORKSAFE_CONN_MAX_AGE", "0")),
        **{key: os.environ.get(_prefix + key, value) for key, value in _defaults.items()},
    }
}

if _vendor == "sqlite3" and os.environ.get("FORKSAFE_SQLITE_TEST_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["FORKSAFE_SQLITE_TEST_NAME"]}

if _vendor == "postgresql" and os.environ.get("FORKSAFE_PG_POOL") == "1":
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 2, "max_size": 4, "timeout": 5}}
