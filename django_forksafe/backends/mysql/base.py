from django.db.backends.mysql import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
