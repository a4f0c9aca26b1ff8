"""
An RQ worker (rqworker --worker-class shop.rqworker.HeartbeatWorker) that
writes a heartbeat row before each job, so it holds a database session when
it forks the job's work horse.
"""

from __future__ import annotations

import os
from typing import Any

from rq import Worker

from shop import events


class HeartbeatWorker(Worker):
    heartbeats = 0

    def execute_job(self, job: Any, queue: Any) -> None:
        self.heartbeats += 1
        events.record(os.environ["FORKSAFE_RUN"], "worker", self.heartbeats)
        super().execute_job(job, queue)
