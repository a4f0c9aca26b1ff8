from __future__ import annotations

import json
import sys

from django_forksafe import detection
from tests.hazards import SCENARIOS
from tests.hazards.common import DRIVER_CLASSES

name, vendor, engine = sys.argv[1:4]
observations = SCENARIOS[name](vendor, engine)
# A scenario whose connections are opened in a child of its own reports their drivers itself.
driver_classes = observations.pop("driver_classes", sorted(DRIVER_CLASSES))
print(json.dumps({**observations, "detection": detection.METHOD, "driver_classes": driver_classes}))
