from dj_db_conn_pool.backends.mysql import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
