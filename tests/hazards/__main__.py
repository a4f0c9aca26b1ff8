from __future__ import annotations

import json
import sys

from tests.hazards import early

early.install(sys.argv[1])  # Before django-forksafe registers its own at-fork handler.

from django_forksafe import detection  # noqa: E402
from tests.hazards import SCENARIOS  # noqa: E402
from tests.hazards.common import DRIVER_CLASSES  # noqa: E402

name, vendor, engine = sys.argv[1:4]
observations = SCENARIOS[name](vendor, engine)
# A scenario whose connections are opened in a child of its own reports their drivers itself.
driver_classes = observations.pop("driver_classes", sorted(DRIVER_CLASSES))
print(json.dumps({**observations, "detection": detection.METHOD, "driver_classes": driver_classes}))
