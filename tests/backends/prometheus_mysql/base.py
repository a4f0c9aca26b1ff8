from django_prometheus.db.backends.mysql import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
