import logging

from django.apps import AppConfig


class DjangoForksafeConfig(AppConfig):
    name = "django_forksafe"
    verbose_name = "django-forksafe"

    def ready(self) -> None:
        from django_forksafe import checks

        # uWSGI loads the app without running system checks: say it here.
        message = checks.uwsgi_without_hook()
        if message is not None:
            logging.getLogger("django_forksafe").warning("%s %s", message, checks.UWSGI_HINT)
