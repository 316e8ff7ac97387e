"""Excluded slots in in-process schedulers on a real Redis, driven by one fake clock.

An excluded slot is claimed like any other and recorded skipped (``excluded``) by the claim
script itself: exactly once across replicas, never published, no run counted, no cap place.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner

from celery_fork_scheduler import Manager, Scheduler, every, signals
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

#: Five seconds before midnight (UTC) between 2 and 3 March 2026: the 2nd is excluded.
BEFORE_MIDNIGHT = "2026-03-02T23:59:55.300+00:00"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(BEFORE_MIDNIGHT)


def make_app(redis_url: str, beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    return replica_helpers.make_app(
        redis_url,
        beat_schedule,
        fork_scheduler_calendars={"march": ["2026-03-02"]},
        **conf,
    )


@contextlib.contextmanager
def replicas(
    redis_url: str, clock: FakeClock, beat_schedule: dict[str, Any], count: int, **conf: Any
) -> Iterator[list[Scheduler]]:
    made = [
        replica_helpers.make_scheduler(
            redis_url,
            clock,
            app=make_app(redis_url, beat_schedule, **conf),
            publisher=RecordingPublisher(),
            replica_id=f"replica-{index}",
        )
        for index in range(count)
    ]
    try:
        yield made
    finally:
        for scheduler in made:
            scheduler.close()


@contextlib.contextmanager
def skipped() -> Iterator[list[tuple[str, str, str]]]:
    seen: list[tuple[str, str, str]] = []

    def record(sender: object, entry: str, slot: Any, reason: str, **_: object) -> None:
        seen.append((entry, slot.isoformat(), reason))

    signals.entry_skipped.connect(record, weak=False)
    try:
        yield seen
    finally:
        signals.entry_skipped.disconnect(record)


def run(schedulers: list[Scheduler], clock: FakeClock, seconds: float) -> None:
    for step in range(int(seconds * 4)):
        for index in range(len(schedulers)):
            schedulers[(index + step) % len(schedulers)].tick()
        clock.advance(0.25)


def published(schedulers: list[Scheduler], name: str) -> list[str]:
    return sorted(
        occurrence.slot.isoformat()
        for scheduler in schedulers
        for occurrence in scheduler.publisher.occurrences  # type: ignore[attr-defined]
        if occurrence.entry == name
    )


def test_two_replicas_record_each_excluded_slot_skipped_once_and_publish_none(
    redis_url: str, clock: FakeClock
) -> None:
    entries = {
        "payroll": {"task": "t", "schedule": every(1).seconds, "calendar": "march"},
        "plain": {"task": "t", "schedule": every(1).seconds},
    }
    with replicas(redis_url, clock, entries, 2) as both, skipped() as skips:
        run(both, clock, 8)
        manager = Manager(both[0].app)
        history = manager.history("payroll")
    excluded_slots = [f"2026-03-02T23:59:{second}+00:00" for second in range(56, 60)]
    allowed = published(both, "payroll")
    assert allowed and all(slot.startswith("2026-03-03T") for slot in allowed)
    assert len(set(allowed)) == len(allowed)
    assert set(excluded_slots) <= set(published(both, "plain"))
    excluded = [(slot, reason) for entry, slot, reason in skips if entry == "payroll"]
    assert collections.Counter(slot for slot, reason in excluded if reason == "excluded") == {
        slot: 1 for slot in excluded_slots
    }
    recorded = [r.slot.isoformat() for r in history if r.outcome == "skipped:excluded"]
    assert sorted(recorded) == excluded_slots
    assert manager.stats("payroll").skips.get("excluded") == 4


def test_excluded_slots_do_not_count_toward_max_runs(redis_url: str, clock: FakeClock) -> None:
    entries = {
        "limited": {
            "task": "t",
            "schedule": every(1).seconds,
            "exclude": ["2026-03-02"],
            "max_runs": 2,
        }
    }
    with replicas(redis_url, clock, entries, 2) as both, skipped() as skips:
        run(both, clock, 9)
    assert published(both, "limited") == [
        "2026-03-03T00:00:00+00:00",
        "2026-03-03T00:00:01+00:00",
    ]
    reasons = collections.Counter(reason for entry, _, reason in skips if entry == "limited")
    assert reasons["excluded"] == 4


def test_an_excluded_slot_takes_no_cap_place_nor_singleton_marker(
    redis_url: str, clock: FakeClock, redis_client: redis.Redis
) -> None:
    keys = Keys("scheduler:")
    entries = {
        "single": {
            "task": "t",
            "schedule": every(1).seconds,
            "exclude": ["2026-03-02"],
            "overlap": "buffer_one",
        }
    }
    with replicas(redis_url, clock, entries, 1, fork_scheduler_max_concurrent=1) as (one,):
        run([one], clock, 4)  # only excluded slots so far
        assert published([one], "single") == []
        assert redis_client.zcard(keys.cap) == 0
        assert not redis_client.exists(keys.running("single"))
        assert not redis_client.exists(keys.buffered("single"))
        assert redis_client.hget(keys.state("single"), "runs") in (None, b"0")
        run([one], clock, 1)
        assert published([one], "single") == ["2026-03-03T00:00:00+00:00"]
        assert redis_client.zcard(keys.cap) == 1


# -- runtime entries, Manager and CLI -----------------------------------------------------------


def test_runtime_entries_keep_exclude_and_calendar_and_replicas_skip_their_slots(
    redis_url: str, clock: FakeClock
) -> None:
    with replicas(redis_url, clock, {}, 2) as both, skipped() as skips:
        manager = Manager(both[0].app, clock=clock)
        job = manager.add(
            "payday",
            "t",
            every(1).seconds,
            exclude=[("2026-03-02", "2026-03-02")],
            calendar="march",
        )
        assert (job.exclude, job.calendar) == (("2026-03-02..2026-03-02",), ("march",))
        updated = manager.update("payday", exclude=["12-25"])
        assert (updated.exclude, updated.calendar) == (("12-25",), ("march",))
        assert manager.get("payday").exclude == ("12-25",)
        run(both, clock, 6)
    allowed = published(both, "payday")
    assert allowed and all(slot.startswith("2026-03-03T") for slot in allowed)
    assert any(entry == "payday" and reason == "excluded" for entry, _, reason in skips)


def test_an_unknown_calendar_is_refused_by_the_manager_naming_the_field(
    redis_url: str, clock: FakeClock
) -> None:
    manager = Manager(make_app(redis_url, {}), clock=clock)
    with pytest.raises(ConfigError, match="unknown calendar 'nope'") as refused:
        manager.add("payday", "t", "every 1 hour", calendar="nope")
    assert (refused.value.entry, refused.value.field) == ("payday", "calendar")


def test_schedule_show_prints_exclusions_and_marks_excluded_next_runs(redis_url: str) -> None:
    # The CLI reads the real clock: exclude tomorrow, every year.
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date()
    yearly = tomorrow.strftime("%m-%d")
    app = make_app(
        redis_url,
        {"payroll": {"task": "t", "schedule": "daily at 09:00", "exclude": [yearly]}},
    )
    obj = CLIContext(app=app, no_color=True, workdir=None)
    result = CliRunner().invoke(schedule, ["show", "payroll", "-n", "3"], obj=obj)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.split() == ["exclude", yearly] for line in lines), result.stdout
    assert any(line.split() == ["calendar", "-"] for line in lines), result.stdout
    runs = [line for line in lines if "09:00:00" in line]
    assert len(runs) == 3, result.stdout
    for line in runs:
        assert line.rstrip().endswith("excluded") is (tomorrow.isoformat() in line), line
    as_json = CliRunner().invoke(schedule, ["show", "payroll", "-n", "3", "--json"], obj=obj)
    data = json.loads(as_json.stdout)
    assert data["exclude"] == [yearly]
    assert [slot[:10] for slot in data["excluded_runs"]] == [tomorrow.isoformat()]


def test_schedule_add_takes_exclude_and_calendar_options(redis_url: str) -> None:
    app = make_app(redis_url, {})
    obj = CLIContext(app=app, no_color=True, workdir=None)
    args = ["add", "payday", "t", "every 1 hour", "--exclude", "12-25", "--calendar", "march"]
    result = CliRunner().invoke(schedule, [*args, "--exclude", "2026-12-24..2026-12-31"], obj=obj)
    assert result.exit_code == 0, result.output
    job = Manager(app).get("payday")
    assert (job.exclude, job.calendar) == (("12-25", "2026-12-24..2026-12-31"), ("march",))
    refused = CliRunner().invoke(
        schedule, ["add", "bad", "t", "every 1 hour", "--exclude", "12-32"], obj=obj
    )
    assert refused.exit_code != 0 and "'12-32'" in refused.stderr and "exclude" in refused.stderr
