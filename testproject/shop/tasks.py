import os

from celery import shared_task

from shop.models import Product
from shop.views import session_id


@shared_task
def product_info(pk: int) -> dict:
    item = Product.objects.get(pk=pk)
    return {"pk": item.pk, "name": item.name, "pid": os.getpid(), "session": session_id()}
