from django.contrib.gis.db.backends.postgis import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
