"""
The Celery app: celery -A testproject worker --pool prefork. The main process
opens a database connection before forking its pool (worker_init) and checks
on shutdown that it still has the same session (written to FORKSAFE_REPORT).
With Django's connection pool (FORKSAFE_PG_POOL=1), the main process fills
its pool before forking, and on shutdown queries every session in it.
"""

import json
import os

from celery import Celery
from celery.signals import worker_init, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

app = Celery("testproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

_main = {}


@worker_init.connect
def open_main_connection(**kwargs):
    from shop.events import open_pool
    from shop.views import session_id

    open_pool()
    _main.update(pid=os.getpid(), session=session_id())


@worker_shutdown.connect
def check_main_connection(**kwargs):
    from django.db import connection

    from shop.views import session_id

    report = dict(_main)
    try:
        report["session_at_shutdown"] = session_id()
    except Exception as exc:
        report["error_at_shutdown"] = f"{type(exc).__name__}: {exc}"
    if getattr(connection, "pool", None) is not None:
        from shop.events import pooled_sessions

        try:
            report["pool_sessions_at_shutdown"] = pooled_sessions()
        except Exception as exc:
            report["pool_error_at_shutdown"] = f"{type(exc).__name__}: {exc}"
        connection.close_pool()
    connection.close()
    if path := os.environ.get("FORKSAFE_REPORT"):
        with open(path, "w") as file:
            json.dump(report, file)
