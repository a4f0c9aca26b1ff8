from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.models import Product


class Command(BaseCommand):
    help = "Make products 1..N, named 'product <pk>' and priced <pk>."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--products", type=int, default=200)

    def handle(self, *args: Any, **options: Any) -> None:
        count = options["products"]
        if list(Product.objects.order_by("pk").values_list("pk", flat=True)) != list(range(1, count + 1)):
            Product.objects.all().delete()
            Product.objects.bulk_create(
                Product(pk=pk, name=f"product {pk}", price=pk) for pk in range(1, count + 1)
            )
