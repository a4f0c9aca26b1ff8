from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=100)
    price = models.IntegerField()


class Event(models.Model):
    """A row written by a process of a task runner: which process (pid) wrote
    it, on which server session, for which test run."""

    run = models.CharField(max_length=100)
    source = models.CharField(max_length=20)
    n = models.IntegerField(default=0)
    pid = models.IntegerField()
    session = models.BigIntegerField()
