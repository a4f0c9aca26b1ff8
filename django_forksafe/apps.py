import logging

from django.apps import AppConfig
from django.core import checks


class DjangoForksafeConfig(AppConfig):
    name = "django_forksafe"
    verbose_name = "django-forksafe"

    def ready(self) -> None:
        from django_forksafe import checks as forksafe_checks
        from django_forksafe.contrib.uwsgi_detection import HINT, hook_missing

        # Not Tags.database: they read settings only, and should run by default.
        checks.register(forksafe_checks.check_engines)
        checks.register(forksafe_checks.check_uwsgi)
        checks.register(forksafe_checks.check_mechanism)
        # uWSGI loads the app without running system checks: say it here.
        message = hook_missing()
        if message is not None:
            logging.getLogger("django_forksafe").warning("%s %s", message, HINT)
