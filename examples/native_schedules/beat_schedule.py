"""A ``beat_schedule`` written for Celery's default scheduler, used unchanged.

Nothing here refers to celery-fork-scheduler: switching to it is ``beat -S fork``.
"""

from __future__ import annotations

from datetime import date, timedelta

from celery.beat import BeatLazyFunc
from celery.schedules import crontab, schedule


def yesterday() -> str:
    """The day before the publish, for the export below."""
    return (date.today() - timedelta(days=1)).isoformat()


beat_schedule = {
    "send-digest": {
        "task": "proj.tasks.send_digest",
        "schedule": crontab(minute=30, hour=7, day_of_week="mon-fri"),
    },
    "rotate-logs": {
        "task": "proj.tasks.rotate_logs",
        "schedule": crontab(minute=0, hour=0, day_of_month="1"),
    },
    "first-monday-report": {
        # Celery ANDs day_of_month with day_of_week: the Monday among the 1st..7th
        "task": "proj.tasks.report",
        "schedule": crontab(minute=0, hour=9, day_of_month="1-7", day_of_week="monday"),
    },
    "refresh-cache": {"task": "proj.tasks.refresh", "schedule": timedelta(minutes=10)},
    "ping": {"task": "proj.tasks.ping", "schedule": schedule(run_every=45)},
    "heartbeat": {"task": "proj.tasks.heartbeat", "schedule": 30.0},
    "nightly-export": {
        # Celery's lazy argument: called at each publish, its result sent
        "task": "proj.tasks.export",
        "schedule": crontab(minute=15, hour=2),
        "args": [BeatLazyFunc(yesterday)],
    },
}

#: The app's ``timezone`` setting: crontab entries are read in it.
timezone = "Europe/Berlin"
