"""A real `celery beat -S fork` and worker: an entry excluding today publishes nothing, and its
history (``celery schedule history``) shows each slot ``skipped:excluded``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import run_python, start_worker_and_beat, worker_fires, write_project

pytestmark = pytest.mark.e2e

PROJECT = """
app.conf.fork_scheduler_calendars = {{"today": ["{around}"]}}
app.conf.beat_schedule = {{
    "holiday-1s": {{"task": "record", "schedule": every(1).seconds, "calendar": "today"}},
    "workday-1s": {{"task": "record", "schedule": every(1).seconds}},
}}
"""


def test_an_entry_excluding_today_publishes_nothing_and_its_history_says_excluded(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    today = datetime.now(timezone.utc).date()
    # Yesterday to tomorrow: the test may run across midnight.
    around = f"{today - timedelta(days=1)}..{today + timedelta(days=1)}"
    module = write_project(workdir, PROJECT.format(around=around))
    client = redis.Redis.from_url(redis_url)
    start_worker_and_beat(module, workdir, redis_url, processes)
    manager = Manager(_app(redis_url, around))

    def skipped_excluded() -> int:
        return sum(r.outcome == "skipped:excluded" for r in manager.history("holiday-1s"))

    wait_until(
        lambda: (
            skipped_excluded() >= 3 and sum(worker_fires(client).counts["workday-1s"].values()) >= 3
        ),
        timeout=40,
        what="three excluded slots and three runs\n" + dump_logs(processes),
    )
    history = run_python(
        workdir, redis_url, "-m", "celery", "-A", module, "schedule", "history", "holiday-1s"
    )
    assert history.returncode == 0, history.stderr
    assert "skipped:excluded" in history.stdout
    assert "sent" not in history.stdout.split()
    fires = worker_fires(client)
    assert not fires.counts["holiday-1s"]
    assert fires.duplicates() == 0
    records = manager.history("holiday-1s")
    slots = [r.slot for r in records if r.outcome == "skipped:excluded"]
    assert len(slots) == len(set(slots))  # each slot recorded once
    assert {r.outcome for r in records} == {"skipped:excluded"}


def _app(redis_url: str, around: str) -> Celery:
    """The project's app as the test process sees it (for the Manager)."""
    app = Celery("proj", broker=redis_url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        fork_scheduler_calendars={"today": [around]},
        beat_schedule={
            "holiday-1s": {"task": "record", "schedule": every(1).seconds, "calendar": "today"},
            "workday-1s": {"task": "record", "schedule": every(1).seconds},
        },
    )
    return app
