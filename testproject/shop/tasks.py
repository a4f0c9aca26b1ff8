import os

from celery import shared_task

from shop.models import Product
from shop.views import session_id


@shared_task
def product_info(pk: int) -> dict:
    item = Product.objects.get(pk=pk)
    return {"pk": item.pk, "name": item.name, "pid": os.getpid(), "session": session_id()}


try:
    from huey.contrib.djhuey import db_task
except ImportError:  # huey is optional.
    pass
else:

    @db_task()
    def huey_record(run: str, n: int) -> dict:
        from shop import events

        return events.record(run, "task", n)
