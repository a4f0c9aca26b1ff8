from mysql.connector.django import base

from django_forksafe import forksafe

DatabaseWrapper = forksafe(base.DatabaseWrapper)
