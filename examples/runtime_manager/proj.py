"""The app of the runtime Manager example: one task, no static schedule at all.

Every job is added at runtime through the Manager (``app.fork_scheduler``), stored in Redis and
picked up by the running beat replica within ``fork_scheduler_refresh_interval``. The worker
records every run it receives in the Redis list ``runtime_manager:received``.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, Task

from celery_fork_scheduler import ENTRY_HEADER, SLOT_HEADER, install

REDIS_URL = os.environ.get("RUNTIME_MANAGER_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Where the worker records the runs it received (one JSON object per run).
RECEIVED = "runtime_manager:received"

app = Celery("runtime_manager", broker=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    beat_max_loop_interval=1,
    worker_hijack_root_logger=False,
)
# Sets beat_scheduler, connects the worker-side hooks (singleton release) and exposes the
# Manager as app.fork_scheduler.
manager = install(app)

_recorder = redis.Redis.from_url(REDIS_URL)


@app.task(bind=True, name="proj.work")
def work(self: Task, label: str) -> None:
    """Record which job this run belongs to, and when it arrived."""
    _recorder.rpush(
        RECEIVED,
        json.dumps(
            {
                "label": label,
                "entry": self.request.get(ENTRY_HEADER),
                "slot": self.request.get(SLOT_HEADER),
                "task_id": self.request.id,
                "received_at": time.time(),
            }
        ),
    )
