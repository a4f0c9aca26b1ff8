"""
A connection pool django-forksafe has no adapter for, as a project might
write one: Django's MySQL backend keeping given-back connections idle in a
module-level list and handing them out again.
"""

from typing import Any

from django.db.backends.mysql import base

IDLE: list[Any] = []


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        return IDLE.pop() if IDLE else super().get_new_connection(conn_params)

    def _close(self) -> None:
        if self.connection is not None:
            IDLE.append(self.connection)  # Given back, not closed.
