from django.apps import AppConfig


class DjangoForksafeConfig(AppConfig):
    name = "django_forksafe"
    verbose_name = "django-forksafe"

    def ready(self) -> None:
        from django_forksafe import checks  # noqa: F401 - registers them.
