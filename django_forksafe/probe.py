"""
One fork hazard, tried for real on one database alias, in a process of its
own: ``python -m django_forksafe.probe ALIAS HAZARD`` with the project's
DJANGO_SETTINGS_MODULE. Prints one JSON object: {"safe": bool, "detail": str}.
Run by the forksafe_check command; the hazards are django_forksafe.hazards'.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django_forksafe.hazards import HAZARDS, connection, verdict


def probe(alias: str, hazard: str) -> dict[str, Any]:
    try:
        if hazard == "reachable":
            connection(alias).ensure_connection()
            return {"safe": True, "detail": "reachable"}
        return verdict(HAZARDS[hazard](alias))
    except Exception as exc:
        return {"safe": False, "detail": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def main() -> None:
    import django

    alias, hazard = sys.argv[1:3]
    django.setup()
    print(json.dumps(probe(alias, hazard)))


if __name__ == "__main__":
    main()
