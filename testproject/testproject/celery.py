"""
The Celery app: celery -A testproject worker --pool prefork. The main process
opens a database connection before forking its pool (worker_init) and checks
on shutdown that it still has the same session (written to FORKSAFE_REPORT).
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
    from shop.views import session_id

    _main.update(pid=os.getpid(), session=session_id())


@worker_shutdown.connect
def check_main_connection(**kwargs):
    from shop.views import session_id

    from django.db import connection

    report = dict(_main)
    try:
        report["session_at_shutdown"] = session_id()
    except Exception as exc:
        report["error_at_shutdown"] = f"{type(exc).__name__}: {exc}"
    connection.close()
    if path := os.environ.get("FORKSAFE_REPORT"):
        with open(path, "w") as file:
            json.dump(report, file)
