"""The demo app: a few entries mixing Celery's native schedules and the new forms.

Every task run is recorded in Redis (list ``demo:received``) with the entry name, the slot and
the task id it carried, so the demo can count fires from what the worker actually received.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import redis
from celery import Celery, Task
from celery.schedules import crontab, schedule

from celery_fork_scheduler import cron, every
from celery_fork_scheduler.ids import ENTRY_HEADER, SLOT_HEADER

REDIS_URL = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("demo", broker=REDIS_URL)
app.conf.update(
    timezone="Europe/Berlin",
    beat_max_loop_interval=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "every-2-seconds": {"task": "demo.record", "schedule": every(2).seconds},
        "cron-6-fields-every-5s": {"task": "demo.record", "schedule": cron("*/5 * * * * *")},
        "string-every-3s": {"task": "demo.record", "schedule": "every 3 seconds"},
        "native-timedelta-4s": {"task": "demo.record", "schedule": timedelta(seconds=4)},
        "native-schedule-6s": {"task": "demo.record", "schedule": schedule(6)},
        "native-crontab-every-minute": {"task": "demo.record", "schedule": crontab()},
    },
)

_recorder = redis.Redis.from_url(REDIS_URL)


@app.task(bind=True, name="demo.record")
def record(self: Task) -> None:
    """Record which entry fired, for which slot, with which task id."""
    _recorder.rpush(
        "demo:received",
        json.dumps(
            {
                "entry": self.request.get(ENTRY_HEADER),
                "slot": self.request.get(SLOT_HEADER),
                "task_id": self.request.id,
                "worker": self.request.hostname,
            }
        ),
    )
