"""A slow singleton: due every 2 seconds, runs for 5, never twice at once across the cluster.

Run any number of ``celery -A proj beat -S fork`` replicas and workers: while a run executes,
the entry's due slots are skipped (``skipped: busy`` in beat's debug log), and the next slot
after the run ends fires again. The broker (and the claim store) is ``$SINGLETON_REDIS_URL``.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, Task

from celery_fork_scheduler import ENTRY_HEADER, SLOT_HEADER, every, install

BROKER = os.environ.get("SINGLETON_REDIS_URL", "redis://localhost:6379/0")
#: Where each run notes its start and end (read by run.py).
RUNS_KEY = "singleton-example:runs"

app = Celery("proj", broker=BROKER)
app.conf.update(
    timezone="UTC",
    beat_max_loop_interval=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Its own key prefix, so that the example leaves other data in that Redis alone.
    fork_scheduler_key_prefix="singleton-example:",
    # A worker killed mid-run frees the entry after this long without its heartbeat.
    fork_scheduler_singleton_lease=10,
    beat_schedule={
        "slow-report": {
            "task": "proj.slow_report",
            "schedule": every(2).seconds,
            "args": [5],
            "singleton": True,
        },
    },
)

# After the settings: connects the worker hooks that keep the singleton marker alive while a
# run executes and free it when the run ends. Without them every run would hold the entry for
# the whole lease.
install(app)

_notes = redis.Redis.from_url(BROKER)


@app.task(bind=True, name="proj.slow_report")
def slow_report(self: Task, seconds: float) -> None:
    """Take ``seconds``; note the start and the end (with the worker's name) in Redis."""

    def note(event: str) -> None:
        _notes.rpush(
            RUNS_KEY,
            json.dumps(
                {
                    "event": event,
                    "at": time.time(),
                    "slot": self.request.get(SLOT_HEADER),
                    "entry": self.request.get(ENTRY_HEADER),
                    "worker": self.request.hostname,
                }
            ),
        )

    note("start")
    time.sleep(seconds)
    note("end")
