"""
The fork each test makes: the child looks for the test's row and writes one
of its own, and tells the parent what happened through a pipe. Each result
is appended as a JSON line to FORKSAFE_REPORT, with the test's name.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from django.db import connection

from shop.models import Product
from shop.views import session_id


def look_from_a_child(test_row: str, earlier_child_row: str | None = None) -> dict[str, Any]:
    """Fork (through Python: os.fork()); in the child, count the rows named
    `test_row` and `earlier_child_row`, and write a row of its own."""
    child_row = f"child-{uuid.uuid4().hex}"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        seen: dict[str, Any] = {}
        try:
            seen["session"] = session_id()
            seen["saw_test_row"] = Product.objects.filter(name=test_row).count()
            if earlier_child_row is not None:
                seen["saw_earlier_child_row"] = Product.objects.filter(name=earlier_child_row).count()
            try:
                Product.objects.create(name=child_row, price=1)
                seen["write"] = "ok"
            except Exception as exc:
                seen["write"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            seen["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write_end, json.dumps(seen).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        seen = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return {**seen, "child_row": child_row, "parent_session": session_id(), "vendor": connection.vendor}


def record(test: str, **result: Any) -> None:
    if path := os.environ.get("FORKSAFE_REPORT"):
        with open(path, "a") as report:
            report.write(json.dumps({"test": test, **result}) + "\n")
