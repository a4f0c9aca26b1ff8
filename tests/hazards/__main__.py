from __future__ import annotations

import faulthandler
import json
import signal
import sys

from tests.hazards import early

# A scenario that hangs is asked for every thread's stack by tests.utils.run()
# (its forked children inherit the handler). No thread is started for it.
faulthandler.register(signal.SIGUSR1, all_threads=True)
early.install(sys.argv[1])  # Before django-forksafe registers its own at-fork handler.

from django_forksafe import detection  # noqa: E402
from tests.hazards import SCENARIOS  # noqa: E402
from tests.hazards.common import DRIVER_CLASSES  # noqa: E402

name, vendor, engine = sys.argv[1:4]
observations = SCENARIOS[name](vendor, engine)
# A scenario whose connections are opened in a child of its own reports their drivers itself.
driver_classes = observations.pop("driver_classes", sorted(DRIVER_CLASSES))
print(json.dumps({**observations, "detection": detection.METHOD, "driver_classes": driver_classes}))
