"""Fork-safe GIS ENGINEs: django_forksafe.backends.gis.<backend>, mirroring
django.contrib.gis.db.backends.<backend>."""
