from django_prometheus.db.backends.postgresql import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
