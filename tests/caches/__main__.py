from __future__ import annotations

import json
import sys

import django
from django.conf import settings

from django_forksafe import detection
from tests.caches import cache_entry
from tests.caches.scenarios import SCENARIOS

name, library, variant, *rest = sys.argv[1:]
where = rest[0] if rest else "tcp"
settings.configure(CACHES={"default": cache_entry(library, variant, where)}, DATABASES={}, USE_TZ=True)
django.setup()
observations = SCENARIOS[name](library, where)
print(json.dumps({**observations, "detection": detection.METHOD, "native": detection.NATIVE is not None}))
