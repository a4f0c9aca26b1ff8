import os

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self) -> None:
        # FORKSAFE_READY_RUN: query at startup, as apps that read their
        # settings from the database do, and leave the connection open (the
        # Huey consumer then forks its workers with it). With Django's
        # connection pool, the pool is filled first (min_size sessions).
        if run := os.environ.get("FORKSAFE_READY_RUN"):
            from shop import events

            events.open_pool()
            events.record(run, "ready")
