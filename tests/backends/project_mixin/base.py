"""Django's PostgreSQL backend made fork-safe through a project's own mixin,
not forksafe(): ``class ProjectMixin(ForkSafeMixin)``, then the wrapper."""

from django.db.backends.postgresql import base

from django_forksafe import ForkSafeMixin


class ProjectMixin(ForkSafeMixin):
    """What a project adds to every wrapper of its own (nothing, here)."""


class DatabaseWrapper(ProjectMixin, base.DatabaseWrapper):
    pass
