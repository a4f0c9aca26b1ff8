from django.db.backends.sqlite3 import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
