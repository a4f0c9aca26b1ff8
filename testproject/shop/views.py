import json
import os

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, JsonResponse

from django_forksafe.hazards import SESSION_SQL as PROBE_SESSION_SQL
from shop.models import Product

SESSION_SQL = {**PROBE_SESSION_SQL, "sqlite": "SELECT 0"}


def session_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute(SESSION_SQL[connection.vendor])
        return int(cursor.fetchone()[0])


def record_master_session() -> None:
    """Query at import time; write the session to FORKSAFE_REPORT if set."""
    report = {"pid": os.getpid(), "session": session_id(), "products": Product.objects.count()}
    if path := os.environ.get("FORKSAFE_REPORT"):
        with open(path, "w") as file:
            json.dump(report, file)


def checks(request: HttpRequest) -> JsonResponse:
    """The system checks' IDs, as seen inside the running server."""
    from django.core.checks import run_checks

    return JsonResponse({"ids": sorted(message.id for message in run_checks() if message.id)})


def product_info(pk: int) -> dict:
    item = Product.objects.get(pk=pk)
    return {"pk": item.pk, "name": item.name, "pid": os.getpid(), "session": session_id()}


def product(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(product_info(pk))


async def product_async(request: HttpRequest, pk: int) -> JsonResponse:
    """The async view: the ORM through sync_to_async (one thread per worker)."""
    return JsonResponse(await sync_to_async(product_info)(pk))
