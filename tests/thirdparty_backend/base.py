"""A "third-party" backend, defined only here: Django's PostgreSQL backend
with a get_new_connection() and a cursor() of its own, as vendor and
instrumentation backends have."""

from typing import Any

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    cursors_made = 0

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        return super().get_new_connection({**conn_params, "application_name": "thirdparty"})

    def cursor(self) -> Any:
        type(self).cursors_made += 1
        return super().cursor()
