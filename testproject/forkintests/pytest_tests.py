"""
pytest -p forkintests.pytest_plugin forkintests/pytest_tests.py: a fork
inside pytest-django's db fixture (one warning per test, however many forks)
and with transaction=True (no warning).
"""

from __future__ import annotations

import os

import pytest

from forkintests.scenario import look_from_a_child, record
from shop.models import Product


def current_test() -> str:
    return os.environ["PYTEST_CURRENT_TEST"].rpartition(" ")[0]


@pytest.mark.django_db
def test_two_forks() -> None:
    Product.objects.create(name="from the test", price=2)
    first = look_from_a_child("from the test")
    second = look_from_a_child("from the test", earlier_child_row=first["child_row"])
    record(current_test(), first=first, second=second)


@pytest.mark.django_db
def test_another_fork() -> None:
    Product.objects.create(name="from the test", price=2)
    record(current_test(), first=look_from_a_child("from the test"))


@pytest.mark.django_db(transaction=True)
def test_fork_with_transaction() -> None:
    Product.objects.create(name="from the test", price=2)
    first = look_from_a_child("from the test")
    second = look_from_a_child("from the test", earlier_child_row=first["child_row"])
    record(current_test(), first=first, second=second)
