"""`celery beat -S fork` as a real process, with a real worker and a real Redis broker."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.schedules import crontab

from celery_fork_scheduler import every
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.schedules import coerce_schedule
from celery_fork_scheduler.testing import CeleryProcess, RedisServer, ScheduleHarness, wait_until

from .conftest import dump_logs
from .harness import start_worker_and_beat, worker_fires, write_project

pytestmark = pytest.mark.e2e

MIXED_SCHEDULE = """
app.conf.beat_schedule = {
    "interval-3s": {"task": "record", "schedule": every(3).seconds, "args": [1]},
    "cron-6-fields-5s": {"task": "record", "schedule": "*/5 * * * * *"},
    "native-crontab": {"task": "record", "schedule": crontab(minute="*")},
    "native-timedelta-4s": {"task": "record", "schedule": timedelta(seconds=4)},
    "string-every-2s": {"task": "record", "schedule": "every 2 seconds"},
}
"""
#: The same schedules as MIXED_SCHEDULE, to compute the expected slots from.
EXPECTED = {
    "interval-3s": every(3).seconds,
    "cron-6-fields-5s": "*/5 * * * * *",
    "native-crontab": crontab(minute="*"),
    "native-timedelta-4s": timedelta(seconds=4),
    "string-every-2s": "every 2 seconds",
}


def test_beat_publishes_each_slot_once_with_headers_and_task_id(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, MIXED_SCHEDULE)
    client = redis.Redis.from_url(redis_url)
    _worker, beat = start_worker_and_beat(module, workdir, redis_url, processes)
    wait_until(
        lambda: "sent " in beat.log(), timeout=60, what="the first publish\n" + dump_logs(processes)
    )
    start = datetime.now(timezone.utc)
    # Run until the minute boundary has passed, so the native crontab fires at least once.
    boundary = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = max(start + timedelta(seconds=20), boundary + timedelta(seconds=3))
    time.sleep((end - datetime.now(timezone.utc)).total_seconds())
    beat.stop()
    wait_until(lambda: client.llen("celery") == 0, timeout=60, what="the worker to drain the queue")
    wait_until(
        lambda: worker_fires(client).counts["native-crontab"], timeout=30, what="crontab fire"
    )

    fires = worker_fires(client)
    window_end = end - timedelta(seconds=2)
    for name, definition in EXPECTED.items():
        schedule = coerce_schedule(definition, default_tz="UTC")
        expected = {slot.isoformat() for slot in schedule.slots(start, window_end)}
        assert expected, name
        assert expected <= fires.slots(name), (name, sorted(expected - fires.slots(name)))
    assert fires.duplicates() == 0
    for (entry_name, slot), ids in fires.task_ids.items():
        assert ids == {task_id_for(entry_name, datetime.fromisoformat(slot))}
    assert fires.counts["native-crontab"][boundary.isoformat()] == 1

    # The users' fake-clock harness gives the same occurrences as the real beat did.
    app = Celery("same", set_as_current=False, broker="memory://")
    app.conf.update(
        timezone="UTC",
        result_expires=None,
        beat_schedule={name: {"task": "record", "schedule": d} for name, d in EXPECTED.items()},
    )
    harness = ScheduleHarness(app, start=start)
    harness.advance_to(window_end)
    for name in EXPECTED:
        assert set(harness.fired(name)) <= fires.slots(name), name
        expected = {
            slot for slot in fires.slots(name) if start < datetime.fromisoformat(slot) <= window_end
        }
        assert set(harness.fired(name)) == expected, name
    harness.close()


def test_a_bad_entry_stops_beat_at_start_up_with_a_message_naming_it(
    redis_url: str, workdir: Path
) -> None:
    module = write_project(
        workdir,
        """
        app.conf.beat_schedule = {
            "fine": {"task": "record", "schedule": 10},
            "nightly-report": {"task": "record", "schedule": "0 0 30 2 *"},
        }
        """,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            module,
            "beat",
            "-S",
            "fork",
            "-s",
            str(workdir / "s"),
        ],
        cwd=workdir,
        env={"TEST_BROKER_URL": redis_url, "PYTHONPATH": str(workdir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "entry 'nightly-report', field 'schedule'" in output


def test_a_bad_entry_found_after_the_first_tick_stops_beat_with_status_1_and_no_traceback(
    redis_url: str, workdir: Path
) -> None:
    """A large configuration is built over the first ticks (here: a page of 2 entries, none
    before the first tick); the bad entry on a later page stops beat as at start-up."""
    module = write_project(
        workdir,
        """
        import celery_fork_scheduler.scheduler
        import celery_fork_scheduler.static_build

        celery_fork_scheduler.scheduler.SETUP_LOAD_SECONDS = 0.0
        celery_fork_scheduler.static_build.PAGE_SIZE = 2
        app.conf.beat_schedule = {
            f"fine-{i}": {"task": "record", "schedule": 10} for i in range(10)
        }
        app.conf.beat_schedule["zz-nightly-report"] = {"task": "record", "schedule": "0 0 30 2 *"}
        """,
    )
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", module, "beat", "-S", "fork", "-l", "info"],
        cwd=workdir,
        env={"TEST_BROKER_URL": redis_url, "PYTHONPATH": str(workdir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "entry 'zz-nightly-report', field 'schedule'" in output
    assert "Traceback" not in output
    assert output.index("beat: Starting...") < output.index("zz-nightly-report")  # in a tick


def test_scheduler_alias_fork_is_registered() -> None:
    from celery.utils.imports import load_extension_class_names

    aliases = dict(load_extension_class_names("celery.beat_schedulers"))
    assert aliases["fork"] == "celery_fork_scheduler.scheduler:Scheduler"


def test_redis_server_helper_starts_a_private_server() -> None:
    with RedisServer() as server:
        assert redis.Redis.from_url(server.url).ping()
    assert server.process is None
