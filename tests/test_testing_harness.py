"""The users' fake-clock harness and pytest plugin (celery_fork_scheduler.testing)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import app_helpers
import pytest
from celery import Celery

from celery_fork_scheduler import every, periodic
from celery_fork_scheduler.testing import ScheduleHarness, assert_fires, assert_never_fires

Harness = Callable[..., ScheduleHarness]


def berlin_app() -> Celery:
    return app_helpers.berlin_app(
        "harness",
        {
            "nightly": {"task": "reports.nightly", "schedule": "daily at 02:30"},
            "pulse": {"task": "pulse", "schedule": every(15).minutes, "args": [1]},
        },
    )


def test_the_plugin_fixture_runs_an_apps_schedule_on_a_fake_clock(
    fork_scheduler_harness: Harness,
) -> None:
    harness = fork_scheduler_harness(berlin_app(), start="2026-03-28T12:00:00+01:00")
    harness.advance(days=2)
    # 02:30 does not exist on 2026-03-29 in Berlin: it fires once at 03:00 CEST (01:00 UTC).
    assert harness.fired("nightly") == ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
    assert len(harness.fired("pulse")) == 2 * 24 * 4


def test_occurrences_carry_what_would_be_published(fork_scheduler_harness: Harness) -> None:
    harness = fork_scheduler_harness(berlin_app(), start="2026-01-01T00:00:00+00:00")
    [occurrence] = harness.advance(minutes=15)
    assert (occurrence.entry, occurrence.task, occurrence.args) == ("pulse", "pulse", (1,))
    assert occurrence.headers["fork_scheduler_slot"] == "2026-01-01T00:15:00+00:00"


def test_assert_fires_checks_the_instants_between_two_times(
    fork_scheduler_harness: Harness,
) -> None:
    harness = fork_scheduler_harness(berlin_app(), start="2026-01-01T00:00:00+00:00")
    assert_fires(
        harness,
        "pulse",
        ["2026-01-01T01:15:00+00:00", "2026-01-01T01:30:00+00:00"],
        between=("2026-01-01T01:00:00+00:00", "2026-01-01T01:30:00+00:00"),
    )
    with pytest.raises(AssertionError, match="expected"):
        assert_fires(harness, "pulse", ["2026-01-01T01:16:00+00:00"])


def test_nothing_fires_while_paused_and_it_resumes_after(fork_scheduler_harness: Harness) -> None:
    harness = fork_scheduler_harness(berlin_app(), start="2026-01-01T00:00:00+00:00")
    harness.pause("pulse")
    assert_never_fires(harness, "pulse", during=timedelta(hours=1))
    harness.resume("pulse")
    assert [o.entry for o in harness.advance(minutes=15)] == ["pulse"]


def test_runtime_entries_and_decorated_tasks_are_part_of_the_schedule(
    fork_scheduler_harness: Harness,
) -> None:
    app: Any = berlin_app()

    @periodic("every 10 minutes", name="sweep")
    @app.task(name="sweep")
    def sweep() -> None: ...

    harness = fork_scheduler_harness(app, start="2026-01-01T00:00:00+00:00")
    harness.add("adhoc", {"task": "adhoc", "schedule": "*/20 * * * *"})
    harness.advance(hours=1)
    assert len(harness.fired("sweep")) == 6
    assert harness.fired("adhoc") == [
        "2026-01-01T00:20:00+00:00",
        "2026-01-01T00:40:00+00:00",
        "2026-01-01T01:00:00+00:00",
    ]
    harness.remove("adhoc")
    harness.advance(hours=1)
    assert len(harness.fired("adhoc")) == 3


def test_the_redis_fixture_is_a_real_server(fork_scheduler_redis: Any) -> None:
    import redis

    assert redis.Redis.from_url(fork_scheduler_redis.url).ping()


def test_one_off_and_max_runs_hold_in_the_harness_as_in_beat(
    fork_scheduler_harness: Harness,
) -> None:
    app = berlin_app()
    app.conf.beat_schedule = {
        "once": {"task": "t", "schedule": every(10).seconds, "one_off": True},
        "thrice": {"task": "t", "schedule": every(10).seconds, "max_runs": 3},
    }
    harness = fork_scheduler_harness(app, start="2026-01-01T00:00:00+00:00")
    harness.advance(minutes=5)
    assert harness.fired("once") == ["2026-01-01T00:00:10+00:00"]
    assert len(harness.fired("thrice")) == 3
