"""
WSGI entry point. Like many real apps, it touches the database at import
time, so under gunicorn --preload or uWSGI (without lazy-apps) the master
holds an open connection when it forks its workers.
"""

import os

from django.core.wsgi import get_wsgi_application

if os.environ.get("FORKSAFE_UWSGI_HOOK", "1") == "1":
    import django_forksafe.contrib.uwsgi  # noqa: F401 - uWSGI's post-fork hook; no-op elsewhere.

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
application = get_wsgi_application()

from shop.views import record_master_session  # noqa: E402 - needs Django set up.

record_master_session()
