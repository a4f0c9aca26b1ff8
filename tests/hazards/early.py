"""
At-fork hooks registered before django-forksafe is imported (as a settings
module or a monitoring library would), so that they run before ours in a
child. Imports nothing of the package: tests.hazards.__main__ installs them
first.
"""

from __future__ import annotations

import os
from typing import Any

# What the hooks saw in this child.
HOOK: dict[str, Any] = {}


def _query_in_child() -> None:
    from django_forksafe.hazards import session_id

    try:
        HOOK["hook_session"] = session_id()
    except Exception as exc:
        HOOK["hook_error"] = f"{type(exc).__name__}: {exc}"


def install(scenario: str) -> None:
    if scenario == "hook_before_ours":
        os.register_at_fork(after_in_child=_query_in_child)
