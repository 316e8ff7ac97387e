"""The scheduler loop, driven by a fake clock: which slots it publishes, and when."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from app_helpers import memory_app
from celery import Celery
from celery.schedules import crontab, schedule

from celery_fork_scheduler import ConfigError, Scheduler, cron, every, signals
from celery_fork_scheduler.backends import LocalBackend
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.ids import ENTRY_HEADER, SLOT_HEADER, task_id_for
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

START = "2026-03-02T10:00:00.300+00:00"


def make_app(beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    return memory_app(beat_schedule, "tests", **conf)


SchedulerFactory = Callable[..., tuple[Scheduler, FakeClock, RecordingPublisher]]


@pytest.fixture
def make_scheduler(tmp_path: Path) -> Iterator[SchedulerFactory]:
    made: list[Scheduler] = []

    def factory(
        beat_schedule: dict[str, Any],
        *,
        start: str = START,
        state: Path | None = None,
        backend: Any = None,
        **conf: Any,
    ) -> tuple[Scheduler, FakeClock, RecordingPublisher]:
        clock = FakeClock(start)
        publisher = RecordingPublisher()
        scheduler = Scheduler(
            make_app(beat_schedule, **conf),
            clock=clock,
            publisher=publisher,
            backend=backend or LocalBackend(state or tmp_path / "state.json"),
            exit_on_config_error=False,
        )
        made.append(scheduler)
        return scheduler, clock, publisher

    yield factory
    for scheduler in made:
        scheduler.close()


def at_seconds(*seconds: int) -> list[str]:
    """The slots at these seconds past 10:00 on the test day, as ``fired`` lists them."""
    return [f"2026-03-02T10:00:{s:02}+00:00" for s in seconds]


def run_for(scheduler: Scheduler, clock: FakeClock, seconds: float, step: float = 0.25) -> None:
    """Tick as beat would, at most ``step`` apart, for ``seconds`` of fake time."""
    end = clock.now + timedelta(seconds=seconds)
    while clock.now < end:
        scheduler.tick()
        clock.advance(min(step, (end - clock.now).total_seconds()))
    scheduler.tick()


def test_an_interval_entry_does_not_fire_because_beat_started(
    make_scheduler: SchedulerFactory,
) -> None:
    scheduler, _, publisher = make_scheduler({"e": {"task": "t", "schedule": every(10).seconds}})
    scheduler.tick()
    assert publisher.fired() == []


def test_an_interval_entry_fires_at_each_anchored_slot(make_scheduler: SchedulerFactory) -> None:
    scheduler, clock, publisher = make_scheduler(
        {"e": {"task": "t", "schedule": every(10).seconds}}
    )
    run_for(scheduler, clock, 30)
    assert publisher.fired("e") == at_seconds(10, 20, 30)


def test_each_message_carries_the_entry_the_slot_and_a_deterministic_task_id(
    make_scheduler: SchedulerFactory,
) -> None:
    scheduler, clock, publisher = make_scheduler(
        {
            "e": {
                "task": "t",
                "schedule": "every 10 seconds",
                "args": [1],
                "kwargs": {"k": 2},
                "options": {"queue": "q", "headers": {"mine": 1}},
            }
        }
    )
    run_for(scheduler, clock, 10)
    [occurrence] = publisher.occurrences
    assert occurrence.headers[ENTRY_HEADER] == "e"
    assert occurrence.headers[SLOT_HEADER] == "2026-03-02T10:00:10+00:00"
    assert occurrence.headers["mine"] == 1
    assert occurrence.task_id == task_id_for("e", occurrence.slot)
    namespace = uuid.UUID("6f1c2a4e-4b7d-5c1e-9a52-3d0f5b8e7c21")
    assert occurrence.task_id == str(uuid.uuid5(namespace, "e@2026-03-02T10:00:10+00:00"))
    assert (occurrence.args, occurrence.kwargs, occurrence.options) == (
        (1,),
        {"k": 2},
        {"queue": "q"},
    )


def test_native_celery_schedules_keep_working(make_scheduler: SchedulerFactory) -> None:
    scheduler, clock, publisher = make_scheduler(
        {
            "td": {"task": "t", "schedule": timedelta(seconds=20)},
            "num": {"task": "t", "schedule": 30.0},
            "sched": {"task": "t", "schedule": schedule(timedelta(seconds=15))},
            "crontab": {"task": "t", "schedule": crontab(minute="*")},
        }
    )
    run_for(scheduler, clock, 60)
    assert publisher.fired("td") == [*at_seconds(20, 40), "2026-03-02T10:01:00+00:00"]
    assert publisher.fired("num") == [*at_seconds(30), "2026-03-02T10:01:00+00:00"]
    assert len(publisher.fired("sched")) == 4
    assert publisher.fired("crontab") == ["2026-03-02T10:01:00+00:00"]


def test_a_six_field_cron_fires_on_its_seconds(make_scheduler: SchedulerFactory) -> None:
    scheduler, clock, publisher = make_scheduler(
        {"c": {"task": "t", "schedule": cron("*/10 * * * * *")}}
    )
    run_for(scheduler, clock, 25)
    assert publisher.fired("c") == at_seconds(10, 20)


def test_tick_returns_the_time_to_the_next_slot_bounded_by_the_max_interval(
    make_scheduler: SchedulerFactory,
) -> None:
    scheduler, clock, _ = make_scheduler(
        {"e": {"task": "t", "schedule": every(10).seconds}}, beat_max_loop_interval=5
    )
    assert scheduler.tick() == pytest.approx(5.0)
    clock.advance(7)
    assert scheduler.tick() == pytest.approx(2.7)


def restarted_at_10_05_30(
    make_scheduler: SchedulerFactory, tmp_path: Path, **conf: Any
) -> tuple[Scheduler, FakeClock, RecordingPublisher]:
    """A minutely entry fires at 10:01; beat stops, and starts again (with ``conf``) at 10:05:30
    from the state it saved."""
    state = tmp_path / "restart.json"
    definition = {"e": {"task": "t", "schedule": every(1).minutes}}
    first, clock, publisher = make_scheduler(definition, state=state)
    run_for(first, clock, 61, step=1)
    assert publisher.fired("e") == ["2026-03-02T10:01:00+00:00"]
    first.close()
    return make_scheduler(definition, state=state, start="2026-03-02T10:05:30+00:00", **conf)


def test_after_downtime_an_overdue_entry_fires_once(
    make_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    second, _, publisher = restarted_at_10_05_30(make_scheduler, tmp_path)
    second.tick()
    assert publisher.fired("e") == ["2026-03-02T10:05:00+00:00"]


def test_the_starting_deadline_drops_a_missed_slot_that_is_too_old(
    make_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    second, clock, publisher = restarted_at_10_05_30(
        make_scheduler, tmp_path, beat_cron_starting_deadline=10
    )
    run_for(second, clock, 31)
    assert publisher.fired("e") == ["2026-03-02T10:06:00+00:00"]


def test_a_long_stall_fires_only_the_slots_inside_the_catch_up_grace(
    make_scheduler: SchedulerFactory,
) -> None:
    scheduler, clock, publisher = make_scheduler({"e": {"task": "t", "schedule": every(1).seconds}})
    scheduler.tick()
    clock.advance(60)
    scheduler.tick()
    assert publisher.fired("e") == [f"2026-03-02T10:00:{s}+00:00" for s in range(56, 60)] + [
        "2026-03-02T10:01:00+00:00"
    ]


def test_without_grace_a_long_stall_fires_the_latest_missed_slot_once(
    make_scheduler: SchedulerFactory,
) -> None:
    scheduler, clock, publisher = make_scheduler(
        {"e": {"task": "t", "schedule": every(1).seconds}}, fork_scheduler_catchup_grace=0
    )
    scheduler.tick()
    clock.advance(60)
    scheduler.tick()
    assert publisher.fired("e") == ["2026-03-02T10:01:00+00:00"]


def test_a_short_delay_fires_every_slot_inside_the_grace(make_scheduler: SchedulerFactory) -> None:
    scheduler, clock, publisher = make_scheduler({"e": {"task": "t", "schedule": every(1).seconds}})
    scheduler.tick()
    clock.advance(3)
    scheduler.tick()
    assert publisher.fired("e") == at_seconds(1, 2, 3)


def test_a_disabled_entry_never_fires(make_scheduler: SchedulerFactory) -> None:
    scheduler, clock, publisher = make_scheduler(
        {
            "off": {"task": "t", "schedule": every(1).seconds, "enabled": False},
            "on": {"task": "t", "schedule": every(1).seconds},
        }
    )
    run_for(scheduler, clock, 5)
    assert publisher.fired("off") == []
    assert len(publisher.fired("on")) == 5


def test_start_at_and_end_at_bound_the_slots(make_scheduler: SchedulerFactory) -> None:
    scheduler, clock, publisher = make_scheduler(
        {
            "e": {
                "task": "t",
                "schedule": every(1).seconds,
                "start_at": "2026-03-02T10:00:03+00:00",
                "end_at": "2026-03-02T10:00:05+00:00",
            }
        }
    )
    run_for(scheduler, clock, 10)
    assert publisher.fired("e") == at_seconds(3, 4, 5)


def test_disabling_the_scheduler_publishes_nothing_and_says_why(
    make_scheduler: SchedulerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        scheduler, clock, publisher = make_scheduler(
            {"e": {"task": "t", "schedule": every(1).seconds}}, fork_scheduler_enabled=False
        )
    run_for(scheduler, clock, 5)
    assert publisher.fired() == []
    assert "fork_scheduler_enabled is False" in caplog.text


def test_without_redis_it_warns_that_replicas_are_not_protected(
    make_scheduler: SchedulerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        make_scheduler({})
    assert "single replica" in caplog.text


class FlakyBackend(LocalBackend):
    """A local backend that can be switched off, as Redis going away would."""

    down = False

    def claim(self, claims: Any) -> Any:
        if self.down:
            raise BackendUnavailableError("down for the test")
        return super().claim(claims)


def test_an_unreachable_backend_publishes_nothing_then_recovers_by_itself(
    make_scheduler: SchedulerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FlakyBackend(tmp_path / "flaky.json")
    scheduler, clock, publisher = make_scheduler(
        {"e": {"task": "t", "schedule": every(1).seconds}}, backend=backend
    )
    run_for(scheduler, clock, 2)
    assert len(publisher.fired("e")) == 2
    backend.down = True
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        run_for(scheduler, clock, 20)
    assert len(publisher.fired("e")) == 2
    assert caplog.text.count("claim backend unavailable") == 1
    backend.down = False
    run_for(scheduler, clock, 3)
    # Slots older than the catch-up grace (5 s) were missed; the recent ones fire, then on time.
    assert publisher.fired("e") == at_seconds(1, 2, *range(19, 26))


@pytest.mark.parametrize(
    ("definition", "field", "message"),
    [
        ({"task": "t"}, "schedule", "is missing"),
        ({"schedule": 5}, "task", "must be a task name"),
        ({"task": "t", "schedule": 5, "sheduel": 1}, "sheduel", "unknown key"),
        ({"task": "t", "schedule": "every banana"}, "schedule", "every banana"),
        ({"task": "t", "schedule": "*/61 * * * *"}, "schedule", ""),
        ({"task": "t", "schedule": "0 0 30 2 *"}, "schedule", ""),
        ({"task": "t", "schedule": 5, "timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
        ({"task": "t", "schedule": 5, "args": "abc"}, "args", "list or tuple"),
        ({"task": "t", "schedule": 5, "kwargs": [1]}, "kwargs", "must be a dict"),
        ({"task": "t", "schedule": 5, "tags": [1]}, "tags", "non-empty strings"),
        ({"task": "t", "schedule": 5, "singleton": "yes"}, "singleton", "True or False"),
        ({"task": "t", "schedule": 5, "start_at": "tomorrow"}, "start_at", "ISO-8601"),
        (
            {
                "task": "t",
                "schedule": 5,
                "start_at": "2026-01-02T00:00:00+00:00",
                "end_at": "2026-01-01T00:00:00+00:00",
            },
            "end_at",
            "later than start_at",
        ),
        ({"task": "t", "schedule": 5, "options": {"task_id": "x"}}, "options", "task_id"),
    ],
    ids=[
        "no-schedule",
        "no-task",
        "typo-key",
        "bad-string",
        "cron-step",
        "feb-30",
        "bad-zone",
        "args-str",
        "kwargs-list",
        "tag-int",
        "singleton-str",
        "start-at",
        "end-before-start",
        "task-id-option",
    ],
)
def test_a_bad_entry_stops_start_up_naming_the_entry_and_the_field(
    make_scheduler: SchedulerFactory, definition: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_scheduler({"good": {"task": "t", "schedule": 5}, "the-bad-one": definition})
    assert raised.value.entry == "the-bad-one"
    assert raised.value.field == field
    assert "the-bad-one" in str(raised.value)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("fork_scheduler_max_retries", -1, "whole number"),
        ("fork_scheduler_retry_delay", "soon", "number of seconds or a timedelta"),
        ("fork_scheduler_lock_duration", 0, "positive"),
        ("fork_scheduler_key_prefix", "", "non-empty string"),
        ("fork_scheduler_enabled", "no", "True or False"),
        ("fork_scheduler_max_concurrent", 1.5, "whole number"),
        ("fork_scheduler_redis_ulr", "redis://", "unknown setting"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_it(
    make_scheduler: SchedulerFactory, setting: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        make_scheduler({}, **{setting: value})
    assert raised.value.field == setting


def test_a_replica_far_behind_claims_only_each_entrys_latest_slot(tmp_path: Path) -> None:
    """Under overload every entry is served in turn, instead of the backlog growing."""
    clock = FakeClock(START)
    ticks = {"monotonic": 0.0}

    class SlowPublisher(RecordingPublisher):
        def publish_many(self, occurrences: Any) -> Any:
            ticks["monotonic"] += 0.01 * len(occurrences)  # 100 publishes per second
            return super().publish_many(occurrences)

    publisher = SlowPublisher()
    skipped: list[str] = []

    def on_skipped(sender: Any = None, reason: str = "", **_: Any) -> None:
        skipped.append(reason)

    entries = {f"e{i:03}": {"task": "t", "schedule": every(1).seconds} for i in range(300)}
    scheduler = Scheduler(
        make_app(entries),
        clock=clock,
        publisher=publisher,
        backend=LocalBackend(tmp_path / "behind.json"),
        monotonic=lambda: ticks["monotonic"],
        exit_on_config_error=False,
    )
    signals.entry_skipped.connect(on_skipped)
    try:
        for _ in range(6):  # on time: every slot, and the replica learns its rate
            clock.advance(1)
            scheduler.tick()
        assert skipped == []
        publisher.clear()
        clock.advance(4)  # four slots of each entry are due at once: more than it can publish
        scheduler.tick()
        fired = publisher.fired()
        assert len(fired) == 300
        assert set(fired) == {clock.now.replace(microsecond=0).isoformat()}
        assert skipped.count("behind") == 300 * 3
    finally:
        signals.entry_skipped.disconnect(on_skipped)
        scheduler.close()
