from django_db_geventpool.backends.postgresql_psycopg3 import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
