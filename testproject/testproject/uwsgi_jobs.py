"""
A WSGI module for uWSGI with a spooler and a mule (--spooler DIR --mule).
Like wsgi.py, it queries at import time, so the master holds a session when
uWSGI forks its workers, its spooler and its mule: C-level forks that skip
Python's at-fork handlers, and no request ever reaches the spooler or the mule.

GET /enqueue/?to=spooler|mule&n=N spools N tasks or sends N mule messages
(without touching the database in the worker); each task writes a
shop.Event row (source "spooler" or "mule") through the ORM with its process
and its server session. The app's own post-fork hook appends its process ID
to FORKSAFE_POSTFORK_LOG.

FORKSAFE_UWSGI_STYLE: how the app sets its spooler and hooks: "decorators"
(uwsgidecorators' @spool, @mulefunc, @postfork) or "raw" (assigning
uwsgi.spooler, uwsgi.mule_msg_hook and uwsgi.post_fork_hook).
FORKSAFE_UWSGI_HOOK: where django_forksafe.contrib.uwsgi is imported: "first"
(before the app sets them), "last" (after, at the end of this file) or "0".
FORKSAFE_RUN: the run the rows are recorded under.
"""

import os
from urllib.parse import parse_qs

HOOK = os.environ.get("FORKSAFE_UWSGI_HOOK", "first")
STYLE = os.environ.get("FORKSAFE_UWSGI_STYLE", "decorators")
RUN = os.environ.get("FORKSAFE_RUN", "uwsgi")

if HOOK == "first":
    import django_forksafe.contrib.uwsgi  # (the module counts as used by the import below)

import uwsgi  # noqa: E402 - importable only inside uWSGI.
from django.core.wsgi import get_wsgi_application  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
django_application = get_wsgi_application()

from shop import events  # noqa: E402 - needs Django set up.
from shop.views import record_master_session  # noqa: E402


def app_post_fork() -> None:
    if path := os.environ.get("FORKSAFE_POSTFORK_LOG"):
        with open(path, "a") as log:
            log.write(f"{os.getpid()}\n")


if STYLE == "decorators":
    from uwsgidecorators import mulefunc, postfork, spool

    @spool
    def spooled(arguments: dict) -> None:
        events.record(RUN, "spooler", int(arguments["n"]))

    @mulefunc
    def muled(n: int) -> None:
        events.record(RUN, "mule", n)

    postfork(app_post_fork)

    def enqueue(to: str, n: int) -> None:
        if to == "spooler":
            spooled(n=str(n))
        else:
            muled(n)

else:

    def raw_spooler(env: dict) -> int:
        events.record(RUN, "spooler", int(env[b"n"]))
        return uwsgi.SPOOL_OK

    def raw_mule_message(message: bytes) -> None:
        events.record(RUN, "mule", int(message))

    uwsgi.spooler = raw_spooler
    uwsgi.mule_msg_hook = raw_mule_message
    uwsgi.post_fork_hook = app_post_fork

    def enqueue(to: str, n: int) -> None:
        if to == "spooler":
            uwsgi.spool({b"n": str(n).encode()})
        else:
            uwsgi.mule_msg(str(n).encode(), 1)


def application(environ, start_response):
    if environ["PATH_INFO"] != "/enqueue/":
        return django_application(environ, start_response)
    query = parse_qs(environ["QUERY_STRING"])
    for n in range(int(query["n"][0])):
        enqueue(query["to"][0], n)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"queued\n"]


record_master_session()

if HOOK == "last":
    import django_forksafe.contrib.uwsgi  # noqa: F401 - the hook, after the app set its own.
