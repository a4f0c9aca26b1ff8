"""
One fork hazard, tried for real on one database alias (or, with ``--cache``,
one memcached cache alias), in a process of its own: ``python -m
django_forksafe.probe [--cache] ALIAS HAZARD`` with the project's
DJANGO_SETTINGS_MODULE. Prints one JSON object: {"safe": bool, "detail": str}.
Run by the forksafe_check command; the hazards are django_forksafe.hazards'.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from django_forksafe.hazards import CACHE_HAZARDS, HAZARDS, cache_verdict, connection, verdict, warm_up_cache


def probe(alias: str, hazard: str) -> dict[str, Any]:
    try:
        if hazard == "reachable":
            connection(alias).ensure_connection()
            return {"safe": True, "detail": "reachable"}
        return verdict(HAZARDS[hazard](alias))
    except Exception as exc:
        return {"safe": False, "detail": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def probe_cache(alias: str, hazard: str) -> dict[str, Any]:
    try:
        if hazard == "reachable":
            warm_up_cache(alias, f"forksafe-check-{uuid.uuid4().hex}")
            return {"safe": True, "detail": "reachable"}
        return cache_verdict(CACHE_HAZARDS[hazard](alias))
    except Exception as exc:
        return {"safe": False, "detail": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def main() -> None:
    import django

    arguments = sys.argv[1:]
    cache = arguments[:1] == ["--cache"]
    alias, hazard = arguments[cache : cache + 2]
    django.setup()
    print(json.dumps(probe_cache(alias, hazard) if cache else probe(alias, hazard)))


if __name__ == "__main__":
    main()
