"""The app of the decorators example: no ``beat_schedule``; the task module declares it.

``include=["tasks"]`` makes the worker and beat import ``tasks.py``, whose ``@periodic``
decorators register the entries with this app.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_fork_scheduler import install

REDIS_URL = os.environ.get("DECORATORS_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("decorators", broker=REDIS_URL, include=["tasks"])
app.conf.update(
    broker_connection_retry_on_startup=True,
    beat_max_loop_interval=1,
    worker_hijack_root_logger=False,
)
install(app)
