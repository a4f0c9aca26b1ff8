from tests.thirdparty_backend import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
