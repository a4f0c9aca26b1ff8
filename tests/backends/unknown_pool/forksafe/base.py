from django_forksafe import forksafe
from tests.backends.unknown_pool import base

DatabaseWrapper = forksafe(base.DatabaseWrapper)
