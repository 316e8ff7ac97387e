"""The app of the pause-on-failure example: one entry whose first run fails.

``sync-invoices`` runs every 2 seconds with ``pause_on_failure: True``. Its task raises
``ValueError('boom')`` on its first call and succeeds afterwards (a call counter in Redis), so
the first run pauses the entry for every replica and, once resumed, the entry runs again.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from celery_fork_scheduler import every, install

REDIS_URL = os.environ.get("PAUSE_ON_FAILURE_REDIS_URL", "redis://127.0.0.1:6379/0")
#: How many times the task was called (the first call fails).
CALLS = "pause_on_failure:calls"

app = Celery("pause_on_failure", broker=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    beat_max_loop_interval=1,
    worker_hijack_root_logger=False,
    beat_schedule={
        "sync-invoices": {
            "task": "proj.sync_invoices",
            "schedule": every(2).seconds,
            "pause_on_failure": True,
        },
    },
)
manager = install(app)

_counter = redis.Redis.from_url(REDIS_URL)


@app.task(name="proj.sync_invoices")
def sync_invoices() -> str:
    """Fail on the first call, succeed on the later ones."""
    if _counter.incr(CALLS) == 1:
        raise ValueError("boom")
    return "synced"
