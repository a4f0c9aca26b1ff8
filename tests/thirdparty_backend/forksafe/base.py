from django_forksafe import forksafe
from tests.thirdparty_backend import base

DatabaseWrapper = forksafe(base.DatabaseWrapper)
