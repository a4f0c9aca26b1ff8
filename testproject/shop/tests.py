"""
A few database tests for manage.py test --parallel (tests/test_programs.py).
Each test appends "<pid> <session>" to FORKSAFE_TEST_LOG, if set, so that the
process and the server session each test ran on can be checked.
"""

import os

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from shop.models import Product
from shop.views import session_id


def log_session() -> None:
    if path := os.environ.get("FORKSAFE_TEST_LOG"):
        with open(path, "a") as log:
            log.write(f"{os.getpid()} {session_id()} {connection.settings_dict['NAME']}\n")


class ProductTests(TestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        cls.product = Product.objects.create(name="chair", price=40)

    def test_read(self) -> None:
        log_session()
        self.assertEqual(Product.objects.get(pk=self.product.pk).name, "chair")

    def test_update_is_rolled_back(self) -> None:
        log_session()
        Product.objects.filter(pk=self.product.pk).update(price=50)
        self.assertEqual(Product.objects.get(pk=self.product.pk).price, 50)

    def test_isolated_from_other_tests(self) -> None:
        log_session()
        self.assertEqual(Product.objects.count(), 1)
        self.assertEqual(Product.objects.get().price, 40)


class ProductTransactionTests(TransactionTestCase):
    def test_commit(self) -> None:
        log_session()
        with transaction.atomic():
            Product.objects.create(name="table", price=100)
        self.assertEqual(Product.objects.count(), 1)

    def test_rollback(self) -> None:
        log_session()
        try:
            with transaction.atomic():
                Product.objects.create(name="lamp", price=10)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        self.assertEqual(Product.objects.count(), 0)


class MoreProductTests(TestCase):
    def test_bulk_create(self) -> None:
        log_session()
        Product.objects.bulk_create(Product(name=f"item {n}", price=n) for n in range(10))
        self.assertEqual(Product.objects.count(), 10)
