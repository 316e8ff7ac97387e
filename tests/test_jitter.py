"""Deterministic jitter (issue 22): each slot is published at ``slot + offset``, the offset a
hash of (entry, slot) in ``[0, jitter)``; the nominal slot stays the identity."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from app_helpers import memory_app
from celery import Celery
from replica_helpers import fired, schedulers, tick_for

from celery_fork_scheduler import ConfigError, Manager, Scheduler, every
from celery_fork_scheduler.backends import LocalBackend
from celery_fork_scheduler.catchup import slots_due
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.entry import Entry, entry_from_config, entry_to_dict
from celery_fork_scheduler.ids import PUBLISH_AT_HEADER, SLOT_HEADER, task_id_for
from celery_fork_scheduler.jitter import jitter_offset
from celery_fork_scheduler.publishing import Occurrence, build_occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

START = "2026-03-02T10:00:00.300+00:00"
DAY = datetime(2026, 3, 2, tzinfo=timezone.utc)


def build(**definition: Any) -> Entry:
    definition.setdefault("task", "tasks.t")
    definition.setdefault("schedule", every(10).seconds)
    return entry_from_config("job", definition, default_timezone=timezone.utc)


# -- the offset ------------------------------------------------------------------------------


def test_the_offset_is_the_same_for_the_same_entry_and_slot() -> None:
    jitter = timedelta(seconds=30)
    first = [jitter_offset("report", DAY + timedelta(minutes=n), jitter) for n in range(50)]
    again = [jitter_offset("report", DAY + timedelta(minutes=n), jitter) for n in range(50)]
    assert first == again
    assert len(set(first)) > 40  # it moves from slot to slot
    other = [jitter_offset("invoice", DAY + timedelta(minutes=n), jitter) for n in range(50)]
    assert other != first  # and from entry to entry


def test_the_offset_is_the_same_for_the_same_instant_in_any_zone() -> None:
    slot = DAY + timedelta(hours=9)
    berlin = slot.astimezone(timezone(timedelta(hours=1)))
    jitter = timedelta(seconds=60)
    assert jitter_offset("e", slot, jitter) == jitter_offset("e", berlin, jitter)


def test_offsets_lie_in_zero_to_jitter_and_spread_evenly() -> None:
    jitter = timedelta(seconds=10)
    offsets = [
        jitter_offset("spread", DAY + timedelta(seconds=10 * n), jitter) for n in range(5000)
    ]
    assert all(timedelta(0) <= offset < jitter for offset in offsets)
    bins = [0] * 10
    for offset in offsets:
        bins[int(offset.total_seconds())] += 1
    assert all(400 <= count <= 600 for count in bins), bins  # 500 expected in each


@pytest.mark.parametrize("jitter", [timedelta(0), timedelta(microseconds=1)], ids=["0", "1us"])
def test_no_jitter_or_one_microsecond_means_no_offset(jitter: timedelta) -> None:
    assert jitter_offset("e", DAY, jitter) == timedelta(0)


def test_the_publish_instant_is_the_slot_plus_its_offset() -> None:
    entry = build(jitter=8)
    slot = DAY + timedelta(seconds=40)
    assert entry.publish_at(slot) == slot + jitter_offset("job", slot, timedelta(seconds=8))
    assert build().publish_at(slot) == slot


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(5, 5), (2.5, 2.5), (timedelta(seconds=3), 3), ("4s", 4), ("0.5 seconds", 0.5), (0, 0)],
    ids=["int", "float", "timedelta", "4s", "text-float", "zero"],
)
def test_a_jitter_is_seconds_a_timedelta_or_a_duration_text(value: object, seconds: float) -> None:
    assert build(jitter=value).jitter == timedelta(seconds=seconds)


def test_a_jitter_of_a_minutes_schedule_may_be_written_in_minutes() -> None:
    entry = build(schedule="every 10 minutes", jitter="2 minutes")
    assert entry.jitter == timedelta(minutes=2)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (-1, "zero or more"),
        (float("nan"), "finite"),
        (True, "number of seconds"),
        ("soon", "'30s' or '2 minutes'"),
        ("5 fortnights", "'30s' or '2 minutes'"),
        ([5], "number of seconds"),
        (11, r"at most the schedule's period \(10 s\), not 11 s"),
        ("1 minute", r"at most the schedule's period \(10 s\)"),
    ],
    ids=["negative", "nan", "bool", "word", "unit", "list", "above-period", "text-above"],
)
def test_a_bad_jitter_names_the_entry_and_the_field(value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as refused:
        build(jitter=value)
    assert (refused.value.entry, refused.value.field) == ("job", "jitter")


def test_a_cron_jitter_is_bounded_by_its_shortest_gap() -> None:
    assert build(schedule="*/5 * * * *", jitter=300).jitter == timedelta(minutes=5)
    with pytest.raises(ConfigError, match=r"period \(300 s\)") as refused:
        build(schedule="*/5 * * * *", jitter=301)
    assert refused.value.field == "jitter"
    # 10:00 and 10:30 every day: the shortest gap is 30 minutes, not a day.
    with pytest.raises(ConfigError, match=r"period \(1800 s\)"):
        build(schedule="0,30 10 * * *", jitter="31 minutes")


def test_the_stored_form_holds_a_jitter_only_when_the_entry_has_one() -> None:
    assert "jitter" not in entry_to_dict(build())
    assert entry_to_dict(build(jitter="3s"))["jitter"] == 3.0
    assert entry_to_dict(build(jitter=0))["jitter"] == 0.0


# -- the default setting --------------------------------------------------------------------


def test_the_default_jitter_setting_is_checked_and_takes_text() -> None:
    assert read_settings({}).default_jitter == timedelta(0)
    assert read_settings({"fork_scheduler_default_jitter": "30s"}).default_jitter == timedelta(
        seconds=30
    )
    with pytest.raises(ConfigError, match="zero or more") as refused:
        read_settings({"fork_scheduler_default_jitter": -2})
    assert refused.value.field == "fork_scheduler_default_jitter"


def test_the_default_applies_up_to_each_entry_period_and_an_own_jitter_wins() -> None:
    default = timedelta(seconds=30)
    assert build().with_default_jitter(default).effective_jitter == timedelta(seconds=10)
    minutes = build(schedule="every 5 minutes").with_default_jitter(default)
    assert minutes.effective_jitter == default
    assert build(jitter=0).with_default_jitter(default).effective_jitter == timedelta(0)
    assert build(jitter=2).with_default_jitter(default).effective_jitter == timedelta(seconds=2)


# -- catch-up: lateness counts from the publish instant -------------------------------------


def first_slot_with_offset(entry: Entry, at_least: float, start: datetime = DAY) -> datetime:
    """The first slot after ``start`` whose offset is at least ``at_least`` seconds."""
    slot = entry.first_slot_after(start)
    while slot is not None and (entry.publish_at(slot) - slot).total_seconds() < at_least:
        slot = entry.first_slot_after(slot)
    assert slot is not None
    return slot


def test_a_slot_waiting_for_its_offset_is_not_due_yet() -> None:
    entry = build(jitter=10)
    slot = first_slot_with_offset(entry, 4)
    after = slot - timedelta(seconds=10)
    grace = timedelta(seconds=5)
    assert slots_due(entry, after, slot + timedelta(seconds=3), grace=grace) == []
    assert slots_due(entry, after, entry.publish_at(slot), grace=grace) == [slot]


def test_a_slot_published_within_the_grace_of_its_offset_is_on_time() -> None:
    # Older than the grace by its nominal time, within it by its publish instant.
    entry = build(jitter=10, catchup="skip")
    slot = first_slot_with_offset(entry, 8)
    now = slot + timedelta(seconds=10)
    assert now - slot > timedelta(seconds=5)
    after = slot - timedelta(seconds=1)
    assert slots_due(entry, after, now, grace=timedelta(seconds=5)) == [slot]
    unjittered = build(catchup="skip")
    assert slots_due(unjittered, after, now, grace=timedelta(seconds=5)) == [
        slot + timedelta(seconds=10)
    ]


# -- the scheduler --------------------------------------------------------------------------


class TimedPublisher(RecordingPublisher):
    """Records, with each occurrence, the scheduler's clock when it was published."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[datetime] = []

    def publish(self, occurrence: Occurrence) -> None:
        super().publish(occurrence)
        self.times.append(self.clock())


def make_app(beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    return memory_app(beat_schedule, "jitter_tests", **conf)


Factory = Callable[..., tuple[Scheduler, FakeClock, TimedPublisher]]


@pytest.fixture
def make_scheduler(tmp_path: Path) -> Iterator[Factory]:
    made: list[Scheduler] = []

    def factory(
        beat_schedule: dict[str, Any], *, start: str | datetime = START, **conf: Any
    ) -> tuple[Scheduler, FakeClock, TimedPublisher]:
        clock = FakeClock(start)
        publisher = TimedPublisher(clock)
        scheduler = Scheduler(
            make_app(beat_schedule, **conf),
            clock=clock,
            publisher=publisher,
            backend=LocalBackend(tmp_path / "state.json"),
            exit_on_config_error=False,
        )
        made.append(scheduler)
        return scheduler, clock, publisher

    yield factory
    for scheduler in made:
        scheduler.close()


def run_until(scheduler: Scheduler, clock: FakeClock, end: datetime, step: float = 0.1) -> None:
    """Tick as beat would: sleep what the tick asks, at most ``step``, until ``end``."""
    while clock.now < end:
        sleep = scheduler.tick()
        clock.advance(max(min(sleep, step, (end - clock.now).total_seconds()), 0.001))
    scheduler.tick()


def check_never_early(publisher: TimedPublisher, entry: Entry) -> list[datetime]:
    slots = [occurrence.slot for occurrence in publisher.occurrences]
    assert len(slots) == len(set(slots)), "a slot was published twice"
    for occurrence, published in zip(publisher.occurrences, publisher.times, strict=True):
        due = entry.publish_at(occurrence.slot)
        assert published >= due, (occurrence.slot, published, due)
        assert published - due < timedelta(seconds=0.5)  # woken at its instant, not later
        assert occurrence.headers[PUBLISH_AT_HEADER] == due.isoformat()
        assert occurrence.headers[SLOT_HEADER] == occurrence.slot.isoformat()
        assert occurrence.task_id == task_id_for("job", occurrence.slot)
    return slots


def test_the_scheduler_publishes_each_slot_once_at_its_jittered_instant(
    make_scheduler: Factory,
) -> None:
    schedule = {"job": {"task": "tasks.t", "schedule": every(10).seconds, "jitter": 10}}
    scheduler, clock, publisher = make_scheduler(schedule)
    run_until(scheduler, clock, clock.now + timedelta(seconds=120))
    entry = scheduler.entries["job"]
    slots = check_never_early(publisher, entry)
    # 10:00:00 is published too when its offset is more than the 0.3 s beat started after it.
    first = entry.first_slot_after(entry.due_edge(datetime.fromisoformat(START)))
    assert first is not None
    assert slots == [first + timedelta(seconds=10 * n) for n in range(len(slots))]
    assert len(slots) >= 11


def test_the_default_jitter_setting_drives_the_scheduler(make_scheduler: Factory) -> None:
    schedule = {
        "job": {"task": "tasks.t", "schedule": every(10).seconds},
        "plain": {"task": "tasks.t", "schedule": every(10).seconds, "jitter": 0},
    }
    scheduler, clock, publisher = make_scheduler(schedule, fork_scheduler_default_jitter="1m")
    assert scheduler.entries["job"].effective_jitter == timedelta(seconds=10)  # its period
    assert scheduler.entries["plain"].effective_jitter == timedelta(0)
    run_until(scheduler, clock, clock.now + timedelta(seconds=60))
    plain = [o for o in publisher.occurrences if o.entry == "plain"]
    assert plain and all(PUBLISH_AT_HEADER not in o.headers for o in plain)
    jittered = [o for o in publisher.occurrences if o.entry == "job"]
    assert jittered and all(PUBLISH_AT_HEADER in o.headers for o in jittered)


def test_a_restart_between_a_slot_and_its_offset_still_publishes_it_once(
    make_scheduler: Factory,
) -> None:
    schedule = {"job": {"task": "tasks.t", "schedule": every(10).seconds, "jitter": 10}}
    entry = build(jitter=10)
    slot = first_slot_with_offset(entry, 4, DAY + timedelta(hours=10))
    first, clock, publisher = make_scheduler(schedule)
    run_until(first, clock, slot + timedelta(seconds=2))  # the slot is passed, not published
    assert slot not in [o.slot for o in publisher.occurrences]
    before = len(publisher.occurrences)
    first.close()
    second, clock2, publisher2 = make_scheduler(schedule, start=clock.now)
    run_until(second, clock2, slot + timedelta(seconds=25))
    assert [o.slot for o in publisher2.occurrences][:1] == [slot]
    check_never_early(publisher2, second.entries["job"])
    assert before == len(publisher.occurrences)


def test_a_runtime_like_change_keeps_the_waiting_slot_of_the_earlier_definition(
    make_scheduler: Factory,
) -> None:
    schedule = {"job": {"task": "tasks.t", "schedule": every(10).seconds, "jitter": 10}}
    entry = build(jitter=10)
    slot = first_slot_with_offset(entry, 4, DAY + timedelta(hours=10))
    scheduler, clock, publisher = make_scheduler(schedule)
    run_until(scheduler, clock, slot + timedelta(seconds=1))
    changed = build(jitter=10, args=[1])
    scheduler.put_entry(changed, clock.now)
    run_until(scheduler, clock, slot + timedelta(seconds=30))
    slots = [o.slot for o in publisher.occurrences]
    assert slots.count(slot) == 1
    assert slots == sorted(slots)
    assert slots[-1] >= slot + timedelta(seconds=10)


# -- the Manager ----------------------------------------------------------------------------


def test_the_manager_stores_and_shows_a_jitter(redis_url: str) -> None:
    app = Celery("jitter_manager", set_as_current=False, broker=redis_url)
    app.conf.update(timezone="UTC", beat_schedule={}, result_expires=None)
    manager = Manager(app, clock=FakeClock(START))
    job = manager.add("poll", "tasks.t", every(1).minutes, jitter="20s")
    assert job.jitter == timedelta(seconds=20)
    assert manager.get("poll").jitter == timedelta(seconds=20)
    assert manager.update("poll", jitter=0).jitter == timedelta(0)
    assert manager.update("poll", jitter=None).jitter is None
    with pytest.raises(ConfigError, match="at most the schedule's period") as refused:
        manager.update("poll", jitter=61)
    assert refused.value.field == "jitter"
    app.close()


def occurrence_headers(entries: Sequence[Entry], slot: datetime) -> list[dict[str, Any]]:
    return [
        dict(build_occurrence(entry, slot, task_id_for(entry.name, slot)).headers)
        for entry in entries
    ]


def test_an_unjittered_message_has_no_publish_at_header() -> None:
    slot = DAY + timedelta(seconds=30)
    plain, jittered = occurrence_headers([build(), build(jitter=5)], slot)
    assert PUBLISH_AT_HEADER not in plain
    assert datetime.fromisoformat(jittered[PUBLISH_AT_HEADER]) >= slot


# -- replicas dividing the entries (ownership) -----------------------------------------------

SPREAD = {f"j{i:02}": {"task": "t", "schedule": every(2).seconds, "jitter": 2} for i in range(12)}


def test_a_dead_owner_costs_its_jittered_entries_a_grace_after_the_offset(
    redis_url: str,
) -> None:
    clock = FakeClock(START)
    survivor = TimedPublisher(clock)
    with schedulers(redis_url, fork_scheduler_owner_grace=1, beat_schedule=SPREAD) as make:
        replicas = [make(clock, "replica-a"), make(clock, "replica-b", publisher=survivor)]
        tick_for(lambda: [r.tick() for r in replicas], clock, 4, step=0.1)
        dead_at = clock()
        tick_for(replicas[1].tick, clock, 10, step=0.1)  # replica-a stopped ticking
        everything = fired(*[r.publisher for r in replicas])  # type: ignore[arg-type]
        assert max(everything.values()) == 1
        entries = replicas[1].entries
        lateness = []
        for occurrence, at in zip(survivor.occurrences, survivor.times, strict=True):
            due = entries[occurrence.entry].publish_at(occurrence.slot)
            assert at >= due, (occurrence.entry, occurrence.slot, at, due)
            if occurrence.slot > dead_at:
                lateness.append(at - due)
        first = dead_at.replace(microsecond=0) + timedelta(seconds=2 - dead_at.second % 2)
        for name in SPREAD:
            for step in range(4):
                slot = first + timedelta(seconds=2 * step)
                assert (name, slot.isoformat()) in everything, (name, slot)
        assert max(lateness) > timedelta(seconds=0.9)  # the dead owner's entries waited a grace
        assert max(lateness) <= timedelta(seconds=1.3)  # counted from the offset, and no more
