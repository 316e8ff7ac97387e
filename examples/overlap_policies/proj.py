"""Two slow entries, each faster to fall due than to run, with two overlap policies.

- ``queued-report`` (``buffer_all``) is due every second and runs for 1.5 s: every slot that
  finds a run in progress is queued in Redis, and the queued runs follow one another, in slot
  order, each started by the worker that ends the previous one. At most
  ``fork_scheduler_buffer_limit`` (here 3) wait; further slots are skipped (``buffer_full``).
- ``fresh-snapshot`` (``terminate_other``) is due every 3 seconds and would run for 30: each
  new run terminates the one in progress (``revoke(..., terminate=True)``) and starts once it
  stopped; the terminated run is recorded as ``revoked`` in the entry's history.

The broker (and the claim store) is ``$OVERLAP_REDIS_URL``.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, Task

from celery_fork_scheduler import ENTRY_HEADER, SLOT_HEADER, every, install

BROKER = os.environ.get("OVERLAP_REDIS_URL", "redis://localhost:6379/0")
#: Where each run notes its start and end (read by run.py).
RUNS_KEY = "overlap-example:runs"

app = Celery("proj", broker=BROKER)
app.conf.update(
    timezone="UTC",
    beat_max_loop_interval=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Its own key prefix, so that the example leaves other data in that Redis alone.
    fork_scheduler_key_prefix="overlap-example:",
    fork_scheduler_singleton_lease=10,
    fork_scheduler_buffer_limit=3,
    beat_schedule={
        "queued-report": {
            "task": "proj.slow",
            "schedule": every(1).seconds,
            "args": [1.5],
            "overlap": "buffer_all",
        },
        "fresh-snapshot": {
            "task": "proj.slow",
            "schedule": every(3).seconds,
            "args": [30],
            "overlap": "terminate_other",
        },
    },
)

# After the settings: the worker hooks publish the next queued run as one ends, and take the
# marker over from a terminated run.
install(app)

_notes = redis.Redis.from_url(BROKER)


@app.task(bind=True, name="proj.slow")
def slow(self: Task, seconds: float) -> None:
    """Take ``seconds``; note the start and the end in Redis."""

    def note(event: str) -> None:
        _notes.rpush(
            RUNS_KEY,
            json.dumps(
                {
                    "event": event,
                    "at": time.time(),
                    "slot": self.request.get(SLOT_HEADER),
                    "entry": self.request.get(ENTRY_HEADER),
                    "id": self.request.id,
                }
            ),
        )

    note("start")
    time.sleep(seconds)
    note("end")
