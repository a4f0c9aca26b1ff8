"""
manage.py test forkintests.django_tests: a fork inside TestCase (one warning
per test, however many forks) and inside TransactionTestCase (no warning).
"""

from __future__ import annotations

from django.test import TestCase, TransactionTestCase

from forkintests.scenario import look_from_a_child, record
from shop.models import Product


class ForkInTestCase(TestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        Product.objects.create(name="from setUpTestData", price=1)

    def test_two_forks(self) -> None:
        Product.objects.create(name="from the test", price=2)
        first = look_from_a_child("from the test")
        second = look_from_a_child("from setUpTestData", earlier_child_row=first["child_row"])
        record(self.id(), first=first, second=second)

    def test_another_fork(self) -> None:
        record(self.id(), first=look_from_a_child("from setUpTestData"))


class ForkInTransactionTestCase(TransactionTestCase):
    def test_fork(self) -> None:
        Product.objects.create(name="from the test", price=2)
        first = look_from_a_child("from the test")
        second = look_from_a_child("from the test", earlier_child_row=first["child_row"])
        record(self.id(), first=first, second=second)
