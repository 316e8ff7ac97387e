"""Tasks that carry their own schedules with ``@periodic`` (put it above ``@app.task``)."""

from __future__ import annotations

from celery import Task
from celery.utils.log import get_task_logger
from proj import app

from celery_fork_scheduler import ENTRY_HEADER, SLOT_HEADER, every, periodic

logger = get_task_logger(__name__)


def _log_fire(task: Task, what: str) -> None:
    logger.info(
        "fired %s for slot %s (%s), task id %s",
        task.request.get(ENTRY_HEADER),
        task.request.get(SLOT_HEADER),
        what,
        task.request.id,
    )


# The entry is named after the task ("tasks.heartbeat"); the fluent schedule of this package.
@periodic(every(2).seconds, tags=["demo"])
@app.task(bind=True, name="tasks.heartbeat")
def heartbeat(self: Task) -> None:
    """Runs every 2 seconds."""
    _log_fire(self, "heartbeat")


# One task, two schedules: stack @periodic, each with its own name and arguments.
# A six-field cron (seconds first) as a string, with no overlapping runs across the cluster ...
@periodic(
    "*/3 * * * * *",
    name="report-every-3s",
    tags=["demo", "reports"],
    singleton=True,
    kwargs={"region": "all"},
)
# ... and a plain-words schedule limited to two runs.
@periodic("every 5 seconds", name="report-eu-twice", kwargs={"region": "eu"}, max_runs=2)
@app.task(bind=True, name="tasks.report")
def report(self: Task, region: str) -> None:
    """Builds the report of ``region``."""
    _log_fire(self, f"region {region}")
