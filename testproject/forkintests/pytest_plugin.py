"""A pytest plugin that appends each warning pytest records, with the test
it was recorded for, to FORKSAFE_WARNINGS as JSON lines."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any


def pytest_warning_recorded(warning_message: warnings.WarningMessage, when: str, nodeid: str, location: Any) -> None:
    if path := os.environ.get("FORKSAFE_WARNINGS"):
        with open(path, "a") as log:
            category = warning_message.category.__name__
            entry = {"test": nodeid, "category": category, "message": str(warning_message.message)}
            log.write(json.dumps(entry) + "\n")
