"""
ASGI entry point (gunicorn -k uvicorn_worker.UvicornWorker). Like wsgi.py, it
touches the database at import time, so under gunicorn --preload the master
holds an open connection when it forks its workers.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
application = get_asgi_application()

from shop.views import record_master_session  # noqa: E402 - needs Django set up.

record_master_session()
