from __future__ import annotations

import json
import sys

from django_forksafe import detection
from tests.hazards import SCENARIOS

name, vendor, engine = sys.argv[1:4]
observations = SCENARIOS[name](vendor, engine)
print(json.dumps({**observations, "detection": detection.METHOD}))
