"""The quick-start app: one task and two entries, run by ``celery -A proj beat -S fork``.

The broker (and so the claim store) is ``$QUICKSTART_REDIS_URL``, by default a local Redis.
"""

from __future__ import annotations

import os

from celery import Celery, Task
from celery.utils.log import get_task_logger

from celery_fork_scheduler import ENTRY_HEADER, SLOT_HEADER, every

app = Celery("proj", broker=os.environ.get("QUICKSTART_REDIS_URL", "redis://localhost:6379/0"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    beat_schedule={
        # a schedule of this package ...
        "hello-every-2s": {"task": "proj.hello", "schedule": every(2).seconds},
        # ... and the same thing written as a string
        "hello-every-3s": {"task": "proj.hello", "schedule": "every 3 seconds"},
    },
)

logger = get_task_logger(__name__)


@app.task(bind=True, name="proj.hello")
def hello(self: Task) -> None:
    """Log which slot this run belongs to; the task id is the same on every replica."""
    logger.info(
        "hello from %s for slot %s, task id %s",
        self.request.get(ENTRY_HEADER),
        self.request.get(SLOT_HEADER),
        self.request.id,
    )
