from django.apps import AppConfig


class DjangoForksafeConfig(AppConfig):
    name = "django_forksafe"
    verbose_name = "django-forksafe"
