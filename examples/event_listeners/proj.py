"""The event-listeners app: a listener that appends every event to a log file.

Settings come from the environment (``run.py`` sets them):

- ``EVENTS_REDIS_URL``: broker and claim store (default ``redis://localhost:6379/0``);
- ``EVENTS_LOG``: the file the listener appends to (default ``events.log``);
- ``EVENTS_PREFIX``: the Redis key prefix of the scheduler (default ``scheduler:``).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import Any

from celery import Celery, Task

import celery_fork_scheduler
from celery_fork_scheduler import every, scheduled_slot

app = Celery("proj", broker=os.environ.get("EVENTS_REDIS_URL", "redis://localhost:6379/0"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    beat_max_loop_interval=1,
    task_default_queue="event-listeners-example",
    fork_scheduler_key_prefix=os.environ.get("EVENTS_PREFIX", "scheduler:"),
    # a dotted path to a listener object (a class would be instantiated without arguments)
    fork_scheduler_event_listeners=["proj.FILE_LISTENER"],
    beat_schedule={
        "report-every-2s": {"task": "proj.report", "schedule": every(2).seconds},
        "flaky-every-3s": {"task": "proj.flaky", "schedule": every(3).seconds},
        # two runs, then every slot is skipped with reason "finished"
        "twice-every-1s": {"task": "proj.report", "schedule": every(1).seconds, "max_runs": 2},
    },
)


class FileEventListener:
    """Appends one line per event: time, process, what happened."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(f"{stamp} pid {os.getpid():>6}  {text}\n")

    # worker side
    def on_job_run(self, job_id: str, job_name: str) -> None:
        self._write(f"run       {job_name} id {job_id}")

    def on_job_complete(self, job_id: str, job_name: str, duration: float) -> None:
        self._write(f"complete  {job_name} in {duration:.3f} s id {job_id}")

    def on_job_error(self, job_id: str, job_name: str, error: BaseException) -> None:
        self._write(f"error     {job_name}: {error!r} id {job_id}")

    # beat side (optional hooks)
    def on_entry_dispatched(self, job_name: str, slot: datetime, job_id: str, replica: str) -> None:
        self._write(f"dispatch  {job_name} slot {slot.isoformat()} id {job_id}")

    def on_entry_skipped(self, job_name: str, slot: datetime, reason: str) -> None:
        self._write(f"skip      {job_name} slot {slot.isoformat()}: {reason}")

    def on_entry_failed(
        self, job_name: str, slot: datetime, job_id: str, error: BaseException
    ) -> None:
        self._write(f"failed    {job_name} slot {slot.isoformat()}: {error!r}")


FILE_LISTENER = FileEventListener(os.environ.get("EVENTS_LOG", "events.log"))

# worker hooks (job events, history), settings defaults, and the listeners of the setting
celery_fork_scheduler.install(app)


@app.task(bind=True, name="proj.report")
def report(self: Task) -> str:
    """Idempotent per slot: the nominal fire time names the report."""
    found = scheduled_slot(self.request)
    time.sleep(0.05)
    return f"report for {found.slot.isoformat()}" if found else "report (not scheduled)"


@app.task(bind=True, name="proj.flaky")
def flaky(self: Task) -> Any:
    """Always fails, to show job_failed / on_job_error."""
    found = scheduled_slot(self.request)
    raise RuntimeError(f"flaky failed for slot {found.slot.isoformat() if found else '?'}")
