"""Adversarial tests for issue 22 (jitter, backfill, pause on failure, exclusions, overlap).

Each test states the documented promise it breaks in its docstring.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import Manager, Scheduler
from celery_fork_scheduler.backends import LocalBackend
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.jitter import jitter_offset
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

KEYS = Keys("scheduler:")
MINUTE = timedelta(minutes=1)


def _report(*args: Any, **kwargs: Any) -> None:
    """The task the entries name."""


def _make_app(redis_url: str, beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    app = Celery("adversary22", set_as_current=False, broker=redis_url)
    app.conf.update(timezone="UTC", beat_schedule=beat_schedule, result_expires=None, **conf)
    app.task(name="tasks.report", shared=False)(_report)
    return app


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def _broker_ids(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange("celery", 0, -1))]


@pytest.fixture
def minute() -> datetime:
    return datetime.now(timezone.utc).replace(second=0, microsecond=0)


# -- exclusions x backfill ----------------------------------------------------------------------


def test_backfill_never_publishes_an_excluded_slot(
    redis_url: str, redis_client: redis.Redis, minute: datetime
) -> None:
    """Promise (docs/schedules.md, "Exclusion dates and calendars"): an excluded slot "is
    never published, on any replica". The scheduler records it ``skipped:excluded``; a
    backfill of the range (meant for slots "an outage left behind") must not publish it."""
    days = f"{(minute - timedelta(days=1)).date()}..{(minute + timedelta(days=1)).date()}"
    app = _make_app(
        redis_url,
        {"holiday": {"task": "tasks.report", "schedule": "* * * * *", "exclude": [days]}},
    )
    try:
        slots = [minute - n * MINUTE for n in range(3, 0, -1)]
        # Redis as the beat replicas leave it: every slot decided, each recorded excluded.
        redis_client.hset(
            KEYS.state("holiday"), mapping={"hwm": _us(slots[-1]), "state": "skipped"}
        )
        for slot in slots:
            item = {
                "slot": _us(slot),
                "replica": "r1",
                "task_id": task_id_for("holiday", slot),
                "outcome": "skipped:excluded",
                "at": _us(slot),
            }
            redis_client.lpush(KEYS.history("holiday"), json.dumps(item))
        manager = Manager(app)
        assert manager.excluded_runs("holiday", slots) == slots
        results = manager.backfill("holiday", slots[0], slots[-1], rate=1000)
        sent = [r.slot for r in results if r.outcome == "sent"]
        assert sent == [], f"backfill published excluded slots: {[r.outcome for r in results]}"
        assert _broker_ids(redis_client) == []
    finally:
        app.close()


# -- jitter ------------------------------------------------------------------------------------


class _TimedPublisher(RecordingPublisher):
    """Records (entry, slot, clock time) of each publish."""

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock
        self.sent: list[tuple[str, datetime, datetime]] = []

    def publish(self, occurrence: Any) -> None:
        super().publish(occurrence)
        self.sent.append((occurrence.entry, occurrence.slot, self.clock()))


def test_jitter_bound_holds_across_a_dst_change_so_no_slot_is_lost(
    tmp_path: Path,
) -> None:
    """Promise (docs/schedules.md, "Jitter"): a jitter is at most the schedule's period "so
    that the publish instants keep the order of the slots and a slot is always published before
    the next one is due"; "The scheduler never claims nor publishes a slot before its publish
    instant" (0.5 s tolerance). The period is sampled in January 2030 only, so
    ``30 1,3 * * *`` in Europe/Berlin accepts a 2 h jitter although on the spring-forward day
    (2026-03-29) its slots are 1 h apart: 01:30 CET = 00:30Z, 03:30 CEST = 01:30Z. When the
    first slot's offset is over an hour and the second's publish instant comes first, the
    scheduler silently never publishes the 00:30Z slot (promise: "each slot once"; "jitter
    changes *when* a slot is published, never *which* slots exist")."""

    definition = {
        "task": "tasks.report",
        "schedule": "30 1,3 * * *",
        "timezone": "Europe/Berlin",
        "jitter": "2h",
    }
    first = datetime(2026, 3, 29, 0, 30, tzinfo=timezone.utc)
    second = datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)
    # An entry name (found deterministically) whose first slot's 2 h offset is over an hour:
    # taken over the day's 1 h gap instead, it must come before the second slot.
    for index in range(1000):
        name = f"nightly-{index}"
        entry = entry_from_config(name, definition, default_timezone=timezone.utc)
        if jitter_offset(name, first, timedelta(hours=2)) > timedelta(hours=1):
            break
    assert entry.first_slot_after(first) == second  # the two slots are 1 h apart that day
    clock = FakeClock("2026-03-29T00:29:00.300+00:00")
    publisher = _TimedPublisher(clock)
    app = Celery("adversary22-jitter", set_as_current=False, broker="memory://")
    app.conf.update(timezone="UTC", beat_schedule={name: definition}, result_expires=None)
    scheduler = Scheduler(
        app,
        clock=clock,
        publisher=publisher,
        backend=LocalBackend(tmp_path / "state.json"),
        exit_on_config_error=False,
    )
    end = max(entry.publish_at(first), entry.publish_at(second)) + timedelta(seconds=2)
    try:
        while clock() < end:  # tick as beat does: sleep what the tick asks, at most 60 s
            sleep = scheduler.tick()
            clock.advance(max(min(sleep, 60.0, (end - clock()).total_seconds()), 0.001))
        scheduler.tick()
    finally:
        scheduler.close()
    fired = [(slot.isoformat(), at.isoformat()) for _, slot, at in publisher.sent]
    # Each slot once, neither before its publish instant (0.5 s tolerance) nor missed.
    assert sorted(slot for slot, _ in fired) == [first.isoformat(), second.isoformat()], (
        f"published (slot, at): {fired}; publish instants: "
        f"{entry.publish_at(first).isoformat()}, {entry.publish_at(second).isoformat()}"
    )
    for _, slot, at in publisher.sent:
        assert at >= entry.publish_at(slot) - timedelta(seconds=0.5), (slot, at)


# -- backfill: bad input ------------------------------------------------------------------------


def test_backfill_cli_refuses_a_range_at_the_start_of_time_without_a_traceback(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Promise (docs/manager.md "Bad input", docs/cli.md): bad input gives a clear one-line
    error and nothing is written; the CLI prints no traceback. ``--from 0001-01-01T00:00``
    (a user asking for "everything since the beginning") raises ``OverflowError`` out of
    the command instead."""
    from celery.bin.base import CLIContext
    from click.testing import CliRunner

    from celery_fork_scheduler.cli import schedule

    app = _make_app(redis_url, {"minutely": {"task": "tasks.report", "schedule": "* * * * *"}})
    try:
        result = CliRunner().invoke(
            schedule,
            ["backfill", "minutely", "--from", "0001-01-01T00:00", "--to", "0001-01-01T00:05"],
            obj=CLIContext(app=app, no_color=True, workdir=None),
        )
    finally:
        app.close()
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {result.exception!r}"
    )
    assert result.exit_code != 0 and "Error" in result.output
    assert _broker_ids(redis_client) == []


def test_backfill_refuses_a_rate_that_is_not_a_number_with_backfill_input_error(
    redis_url: str,
) -> None:
    """Promise (docs/manager.md "Bad input"): "a ``rate`` not above 0 ... (``BackfillInputError``,
    a ``ConfigError`` naming the entry and the field)", nothing written. ``rate="5"`` (a
    number read from a form or an environment variable) escapes as a bare ``TypeError``."""
    from celery_fork_scheduler import BackfillInputError

    app = _make_app(redis_url, {"minutely": {"task": "tasks.report", "schedule": "* * * * *"}})
    now = datetime.now(timezone.utc)
    try:
        with pytest.raises(BackfillInputError) as refused:
            Manager(app).backfill("minutely", now - 5 * MINUTE, now, rate="5")  # type: ignore[arg-type]
    finally:
        app.close()
    assert (refused.value.entry, refused.value.field) == ("minutely", "rate")
