"""Properties every schedule family must have, checked with Hypothesis (DST days weighted in).

next_slot, previous_slot and slots agree with each other for intervals, daily, weekly and monthly
schedules, 5- and 6-field cron, macros, solar events and Celery's crontab, schedule, timedelta
and numbers: a slot S is in ``slots(S - 1 µs, S)`` (the question the tick asks when S comes up),
``previous_slot(S) == S``, and ``previous_slot(t) <= t < next_slot(previous_slot(t))``.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import celery.schedules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_fork_scheduler.schedules import (
    SlotSchedule,
    Solar,
    at,
    cron,
    every,
    from_celery,
    schedule_from_dict,
)
from celery_fork_scheduler.schedules.cron_fields import _parse_cron

UTC = timezone.utc
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]

DEFINITIONS: list[SlotSchedule] = [
    every(5).minutes,
    every(7).seconds.offset(seconds=3),
    every(1).hour.starting(datetime(2026, 1, 1, 0, 30, tzinfo=UTC)),
    at("02:30"),
    at("01:45", "02:00", "02:15", "03:00"),
    every(3).days.at("02:30"),
    every().sunday.at("02:30"),
    every(1).month.on(1, 15, -1).at("02:30"),
    cron("*/20 * * * *"),
    cron("30 1-3 * * *"),
    cron("*/15 2 * * *"),
    cron("0 0 29 2 *"),
    cron("0 0 L * *"),
    cron("0,30 */10 * * * *"),
    cron("0 0 13 * 5"),
    cron("@weekly"),
    cron("@hourly"),
    cron("@monthly"),
    cron("@yearly"),
    cron("*/7 29-31 2 * * *"),
    cron("0 0 */2 * mon"),
    cron("0 0 2,17 * thu#3"),
    cron("0 30 2 15W,LW * 5L"),
    cron("0 2 * * 1/3"),
    every(1).week,
    Solar(event="sunrise", lat=52.52, lon=13.405),
    Solar(event="solar_noon", lat=-33.45, lon=-70.67),
    Solar(event="dusk_astronomical", lat=59.9, lon=10.75),  # none around midsummer
    from_celery(celery.schedules.crontab(minute="*/20", hour="1-3")),
    from_celery(celery.schedules.crontab(minute=30, hour=2, day_of_month="1-7", day_of_week=0)),
    from_celery(celery.schedules.schedule(run_every=timedelta(seconds=45))),
    from_celery(timedelta(minutes=10)),
    from_celery(90),
    from_celery(0.5),
]

schedules = st.builds(
    lambda definition, zone: definition.with_timezone(zone),
    st.sampled_from(DEFINITIONS),
    st.sampled_from(ZONES),
)

# DST transition instants (UTC) of the sampled zones in 2026, for instants close to them.
TRANSITIONS = [
    datetime(2026, 3, 29, 1, tzinfo=UTC),
    datetime(2026, 10, 25, 1, tzinfo=UTC),
    datetime(2026, 3, 8, 7, tzinfo=UTC),
    datetime(2026, 11, 1, 6, tzinfo=UTC),
    datetime(2026, 4, 4, 15, tzinfo=UTC),
    datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
]

near_transitions = st.builds(
    lambda base, seconds: base + timedelta(seconds=seconds),
    st.sampled_from(TRANSITIONS),
    st.integers(min_value=-3 * 3600, max_value=3 * 3600),
)
anywhere = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2032, 12, 31), timezones=st.just(UTC)
)
instants = st.one_of(near_transitions, anywhere)

EPSILON = timedelta(microseconds=1)


def neighbours(schedule: SlotSchedule, start: datetime) -> tuple[datetime | None, datetime]:
    """The slots before (if any) and after ``start``; every generated schedule has a next one."""
    following = schedule.next_slot(start)
    assert following is not None
    return schedule.previous_slot(start), following


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(schedule=schedules, start=instants)
def test_slots_strictly_increase(schedule: SlotSchedule, start: datetime) -> None:
    moment = start
    for _ in range(12):
        following = schedule.next_slot(moment)
        assert following is not None
        assert following > moment
        assert following.utcoffset() == timedelta(0)
        moment = following


@PROPERTY
@given(schedule=schedules, start=instants)
def test_next_slot_is_the_first_of_slots(schedule: SlotSchedule, start: datetime) -> None:
    window = list(itertools.islice(schedule.slots(start, start + timedelta(days=20 * 366)), 20))
    assert window
    assert schedule.next_slot(start) == window[0]
    assert window == sorted(set(window))


@PROPERTY
@given(schedule=schedules, start=instants)
def test_previous_slot_of_a_slot_is_that_slot(schedule: SlotSchedule, start: datetime) -> None:
    following = schedule.next_slot(start)
    assert following is not None
    assert schedule.previous_slot(following) == following


@PROPERTY
@given(schedule=schedules, start=instants)
def test_a_slot_is_in_the_window_that_ends_at_it(schedule: SlotSchedule, start: datetime) -> None:
    following = schedule.next_slot(start)
    assert following is not None
    assert list(schedule.slots(following - EPSILON, following)) == [following]
    assert schedule.next_slot(following - EPSILON) == following


@PROPERTY
@given(schedule=schedules, start=instants)
def test_no_slot_lies_between_previous_and_next(schedule: SlotSchedule, start: datetime) -> None:
    previous, following = neighbours(schedule, start)
    assert schedule.previous_slot(following - EPSILON) == previous
    if previous is not None:
        assert list(schedule.slots(previous, following)) == [following]


@PROPERTY
@given(schedule=schedules, start=instants)
def test_previous_and_next_slot_bracket_an_instant(schedule: SlotSchedule, start: datetime) -> None:
    previous, following = neighbours(schedule, start)
    if previous is not None:
        assert previous <= start < following
        assert schedule.next_slot(previous) == following


@settings(max_examples=40, deadline=None)
@given(definition=st.sampled_from(DEFINITIONS), zone=st.sampled_from(ZONES), start=instants)
def test_slots_do_not_depend_on_when_the_schedule_was_created(
    definition: SlotSchedule, zone: str, start: datetime
) -> None:
    early = definition.with_timezone(zone)
    expected = list(itertools.islice(early.slots(start, start + timedelta(days=40)), 10))
    # Rebuild the schedule (and its parsed cron fields) from its stored form.
    _parse_cron.cache_clear()
    late = schedule_from_dict(early.to_dict())
    assert list(itertools.islice(late.slots(start, start + timedelta(days=40)), 10)) == expected
    assert late == early
