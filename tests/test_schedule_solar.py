"""Solar schedules fire at their event: slots agree with themselves and with an almanac.

The expected times come from the textbook approximation of the sun's position (Spencer's series
for the declination and the equation of time, NOAA's hour-angle formula), written out here and
accurate to a minute or two, not from ephem or Celery.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import celery.schedules
import pytest
from app_helpers import berlin_app

from celery_fork_scheduler.schedules import Solar, from_celery
from celery_fork_scheduler.testing import ScheduleHarness

UTC = timezone.utc
EPSILON = timedelta(microseconds=1)
BERLIN = (52.52, 13.405)
#: Altitude of the sun's centre at each event (degrees), and -1 before noon, +1 after it.
EVENTS = {"sunrise": (-0.833, -1), "dawn_civil": (-6.0, -1), "solar_noon": (0.0, 0)}
EVENTS["sunset"] = (-0.833, 1)
TOLERANCE = timedelta(minutes=3)


def almanac(event: str, day: date, lat: float, lon: float) -> datetime:
    """The UTC time of ``event`` on ``day`` by the textbook approximation."""
    gamma = 2 * math.pi / 365 * (day.timetuple().tm_yday - 1)
    equation_of_time = 229.18 * (
        0.000075
        + 0.001868 * math.cos(gamma)
        - 0.032077 * math.sin(gamma)
        - 0.014615 * math.cos(2 * gamma)
        - 0.040849 * math.sin(2 * gamma)
    )
    declination = (
        0.006918
        - 0.399912 * math.cos(gamma)
        + 0.070257 * math.sin(gamma)
        - 0.006758 * math.cos(2 * gamma)
        + 0.000907 * math.sin(2 * gamma)
        - 0.002697 * math.cos(3 * gamma)
        + 0.00148 * math.sin(3 * gamma)
    )
    noon_minutes = 720 - 4 * lon - equation_of_time
    altitude, side = EVENTS[event]
    phi = math.radians(lat)
    cos_hour_angle = (math.sin(math.radians(altitude)) - math.sin(phi) * math.sin(declination)) / (
        math.cos(phi) * math.cos(declination)
    )
    minutes = noon_minutes + side * 4 * math.degrees(math.acos(cos_hour_angle))
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minutes)


JUNE = [date(2026, 6, 1) + timedelta(days=n) for n in range(30)]


def june_in_berlin(event: str) -> tuple[Solar, list[tuple[date, datetime]]]:
    """The Berlin schedule of ``event`` and its first slot after each midnight (UTC) of June."""
    schedule = Solar(event=event, lat=BERLIN[0], lon=BERLIN[1])
    found = []
    for day in JUNE:
        slot = schedule.next_slot(datetime(day.year, day.month, day.day, tzinfo=UTC))
        assert slot is not None
        found.append((day, slot))
    return schedule, found


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_each_day_has_a_whole_second_slot_at_the_almanac_time(event: str) -> None:
    _, slots = june_in_berlin(event)
    for day, slot in slots:
        assert slot.microsecond == 0
        assert abs(slot - almanac(event, day, *BERLIN)) < TOLERANCE, (event, day, slot)


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_a_slot_is_found_by_the_question_the_tick_asks_at_it(event: str) -> None:
    """The tick asks for the slots in ``(S - 1 µs, S]`` when slot S comes up."""
    schedule, slots = june_in_berlin(event)
    for _, slot in slots:
        assert list(schedule.slots(slot - EPSILON, slot)) == [slot]
        assert schedule.next_slot(slot - EPSILON) == slot
        assert schedule.previous_slot(slot) == slot
        before = schedule.previous_slot(slot - EPSILON)
        assert before is not None and slot - before > timedelta(hours=23)


def test_the_slot_does_not_depend_on_where_the_search_starts() -> None:
    """ephem's answer moves by milliseconds with the start of its search; a slot must not."""
    schedule = Solar(event="sunrise", lat=BERLIN[0], lon=BERLIN[1])
    day_start = datetime(2026, 6, 1, tzinfo=UTC)
    slot = schedule.next_slot(day_start)
    assert slot is not None
    for n in range(1, 40):
        after = day_start + (slot - day_start) * n / 40
        assert schedule.next_slot(after) == slot
    for n in range(1, 40):
        at = slot + timedelta(hours=23) * n / 40
        assert schedule.previous_slot(at) == slot


def test_polar_night_has_no_sunrise() -> None:
    # Longyearbyen: the sun stays below the horizon from late October to mid-February.
    schedule = Solar(event="sunrise", lat=78.22, lon=15.65)
    december = datetime(2026, 12, 15, tzinfo=UTC)
    following = schedule.next_slot(december)
    previous = schedule.previous_slot(december)
    assert following is not None and previous is not None
    assert date(2027, 2, 8) <= following.date() <= date(2027, 2, 22), following
    assert date(2026, 10, 18) <= previous.date() <= date(2026, 11, 1), previous
    assert list(schedule.slots(previous, following)) == [following]


def test_a_solar_entry_fires_at_its_event_on_a_fake_clock() -> None:
    sunrise = {"task": "garden.lights_off", "schedule": celery.schedules.solar("sunrise", *BERLIN)}
    app = berlin_app("solar", {"sunrise": sunrise})
    schedule = from_celery(celery.schedules.solar("sunrise", *BERLIN))
    first = schedule.next_slot(datetime(2026, 6, 1, tzinfo=UTC))
    assert first is not None
    harness = ScheduleHarness(app, start="2026-06-01T00:00:00+00:00")
    try:
        assert harness.advance_to(first - timedelta(seconds=1)) == []
        [occurrence] = harness.advance(seconds=1)
        assert (occurrence.entry, occurrence.slot) == ("sunrise", first)
        harness.advance(days=3)
        fired = [datetime.fromisoformat(slot) for slot in harness.fired("sunrise")]
        assert [slot.date() for slot in fired] == JUNE[:4]
        for day, slot in zip(JUNE, fired, strict=False):
            assert abs(slot - almanac("sunrise", day, *BERLIN)) < TOLERANCE
    finally:
        harness.close()
