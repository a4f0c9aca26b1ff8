"""A "third-party" backend, defined only here: Django's PostgreSQL backend
with a get_new_connection() of its own, as vendor backends have."""

from typing import Any

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        return super().get_new_connection({**conn_params, "application_name": "thirdparty"})
