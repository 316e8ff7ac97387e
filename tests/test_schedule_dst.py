"""Daylight-saving days: hand-checked UTC instants for cron and calendar schedules.

Transitions used (all 2026):
  Europe/Berlin        spring 03-29 02:00 CET -> 03:00 CEST (01:00Z);
                       fall 10-25 03:00 CEST -> 02:00 CET (01:00Z)
  America/New_York     spring 03-08 02:00 EST -> 03:00 EDT (07:00Z);
                       fall 11-01 02:00 EDT -> 01:00 EST (06:00Z)
  Australia/Lord_Howe  spring 10-04 02:00 +10:30 -> 02:30 +11 (10-03 15:30Z);
                       fall 04-05 02:00 +11 -> 01:30 +10:30 (04-04 15:00Z)
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from slot_helpers import first_slots, utc

from celery_fork_scheduler.schedules import SlotSchedule, at, cron, every

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
LORD_HOWE = "Australia/Lord_Howe"

CASES = [
    # --- spring forward: a nonexistent time fires once, at the end of the gap
    pytest.param(
        at("02:30").with_timezone(BERLIN),
        "2026-03-28T12:00:00Z",
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        id="berlin-spring-at-02:30-fires-at-03:00-cest",
    ),
    pytest.param(
        cron("30 2 * * *", BERLIN),
        "2026-03-28T12:00:00Z",
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        id="berlin-spring-cron-02:30-fires-at-03:00-cest",
    ),
    pytest.param(
        cron("*/20 2 * * *", BERLIN),
        "2026-03-28T23:00:00Z",
        ["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z", "2026-03-30T00:20:00Z"],
        id="berlin-spring-three-skipped-times-collapse-into-one-slot",
    ),
    pytest.param(
        cron("0 2,3 * * *", BERLIN),
        "2026-03-28T12:00:00Z",
        ["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z", "2026-03-30T01:00:00Z"],
        id="berlin-spring-skipped-02:00-and-real-03:00-fire-once",
    ),
    pytest.param(
        cron("0 30 2 * * *", BERLIN),
        "2026-03-28T12:00:00Z",
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        id="berlin-spring-six-field-cron",
    ),
    pytest.param(
        cron("*/30 * * * * *", BERLIN),
        "2026-03-29T00:59:00Z",
        ["2026-03-29T00:59:30Z", "2026-03-29T01:00:00Z", "2026-03-29T01:00:30Z"],
        id="berlin-spring-every-30-seconds-crosses-the-gap-once",
    ),
    pytest.param(
        at("02:30").with_timezone(NEW_YORK),
        "2026-03-07T12:00:00Z",
        ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"],
        id="new-york-spring-at-02:30",
    ),
    pytest.param(
        cron("15 2 * * *", LORD_HOWE),
        "2026-10-03T00:00:00Z",
        ["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"],
        id="lord-howe-spring-half-hour-gap-cron",
    ),
    pytest.param(
        at("02:00").with_timezone(LORD_HOWE),
        "2026-10-03T00:00:00Z",
        ["2026-10-03T15:30:00Z", "2026-10-04T15:00:00Z"],
        id="lord-howe-spring-half-hour-gap-at",
    ),
    # --- fall back: a repeated time fires once, at its first occurrence
    pytest.param(
        at("02:30").with_timezone(BERLIN),
        "2026-10-24T12:00:00Z",
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
        id="berlin-fall-at-02:30-fires-at-first-occurrence",
    ),
    pytest.param(
        cron("30 2 * * *", BERLIN),
        "2026-10-24T12:00:00Z",
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
        id="berlin-fall-cron-02:30-fires-at-first-occurrence",
    ),
    pytest.param(
        cron("*/30 * * * *", BERLIN),
        "2026-10-24T23:45:00Z",
        ["2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T02:00:00Z"],
        id="berlin-fall-every-half-hour-skips-the-second-pass",
    ),
    pytest.param(
        cron("*/20 * * * * *", BERLIN),
        "2026-10-25T00:59:40Z",
        ["2026-10-25T02:00:00Z", "2026-10-25T02:00:20Z"],
        id="berlin-fall-six-field-cron-skips-the-second-pass",
    ),
    pytest.param(
        cron("30 1 * * *", NEW_YORK),
        "2026-10-31T12:00:00Z",
        ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
        id="new-york-fall-cron-01:30",
    ),
    pytest.param(
        at("01:45").with_timezone(LORD_HOWE),
        "2026-04-04T00:00:00Z",
        ["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"],
        id="lord-howe-fall-at-01:45",
    ),
    pytest.param(
        cron("0 */15 1 * * *", LORD_HOWE),
        "2026-04-04T13:50:00Z",
        [
            "2026-04-04T14:00:00Z",
            "2026-04-04T14:15:00Z",
            "2026-04-04T14:30:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-05T14:30:00Z",
        ],
        id="lord-howe-fall-six-field-cron-half-hour-repeat",
    ),
    # --- intervals ignore wall clocks
    pytest.param(
        every(1).hour.with_timezone(BERLIN),
        "2026-10-25T00:00:00Z",
        ["2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"],
        id="interval-is-pure-utc-across-fall-back",
    ),
]


@pytest.mark.parametrize(("schedule", "after", "expected"), CASES)
def test_it_fires_at_the_hand_checked_instants(
    schedule: SlotSchedule, after: str, expected: list[str]
) -> None:
    assert first_slots(schedule, after, len(expected)) == expected


@pytest.mark.parametrize(("schedule", "after", "expected"), CASES)
def test_previous_slot_finds_each_hand_checked_instant(
    schedule: SlotSchedule, after: str, expected: list[str]
) -> None:
    for instant in expected:
        assert schedule.previous_slot(utc(instant)) == utc(instant)


def test_it_fires_once_in_the_repeated_hour() -> None:
    schedule = cron("30 * * * *", BERLIN)
    found = list(schedule.slots(utc("2026-10-24T22:00:00Z"), utc("2026-10-25T03:00:00Z")))
    assert [slot.strftime("%H:%M") for slot in found] == ["22:30", "23:30", "00:30", "02:30"]


def test_croniter_alone_would_fire_twice_in_the_repeated_hour() -> None:
    """The reason for our own wall-clock mapping: croniter repeats 02:30 (00:30Z and 01:30Z)."""
    iterator = croniter("30 * * * *", utc("2026-10-25T00:00:00Z").astimezone(ZoneInfo(BERLIN)))
    raw = [iterator.get_next(datetime).astimezone(timezone.utc) for _ in range(3)]
    assert [slot.strftime("%H:%M") for slot in raw] == ["00:30", "01:30", "02:30"]
    ours = first_slots(cron("30 * * * *", BERLIN), "2026-10-25T00:00:00Z", 2)
    assert ours == ["2026-10-25T00:30:00Z", "2026-10-25T02:30:00Z"]


@pytest.mark.parametrize(
    ("inside", "previous", "following"),
    [
        pytest.param(
            "2026-10-25T01:30:00Z", "2026-10-25T00:59:50Z", "2026-10-25T02:00:00Z", id="berlin"
        ),
        pytest.param(
            "2026-04-04T15:10:00Z", "2026-04-04T14:59:50Z", "2026-04-04T15:30:00Z", id="lord-howe"
        ),
    ],
)
def test_an_instant_in_the_second_pass_sits_between_the_first_pass_and_the_end(
    inside: str, previous: str, following: str
) -> None:
    zone = BERLIN if inside.startswith("2026-10") else LORD_HOWE
    schedule = cron("*/10 * * * * *", zone)
    assert schedule.next_slot(utc(inside)) == utc(following)
    assert schedule.previous_slot(utc(inside)) == utc(previous)


def test_every_other_day_counts_local_days_from_1970() -> None:
    # 2026-01-01 is day 20454 after 1970-01-01: even, so it is one of the days.
    schedule = every(2).days.at("10:30").with_timezone(BERLIN)
    assert first_slots(schedule, "2026-01-01T00:00:00Z", 2) == [
        "2026-01-01T09:30:00Z",
        "2026-01-03T09:30:00Z",
    ]
