import os

from django.db import connection
from django.http import HttpRequest, JsonResponse

from shop.models import Product


def product(request: HttpRequest, pk: int) -> JsonResponse:
    item = Product.objects.get(pk=pk)
    return JsonResponse({"pk": item.pk, "name": item.name, "pid": os.getpid(), "vendor": connection.vendor})
