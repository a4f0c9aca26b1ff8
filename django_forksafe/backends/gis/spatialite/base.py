from django.contrib.gis.db.backends.spatialite import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
