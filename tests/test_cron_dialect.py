"""The cron dialect, case by case, with instants worked out from the calendar by hand.

2026 calendar facts used below: 1 January is a Thursday (Mondays 5, 12, 19, 26; Fridays 2, 9,
16, 23, 30); 1 February a Sunday (Mondays 2, 9, 16, 23; Thursdays 5, 12, 19; Fridays 6, 13, 20,
27; the 28th a Saturday); 1 April a Wednesday (Sundays 5, 12, 19, 26: no fifth Sunday); 31 May a
Sunday; 1 August a Saturday.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from celery.schedules import crontab
from slot_helpers import first_slots, utc

from celery_fork_scheduler.errors import ScheduleError
from celery_fork_scheduler.schedules import SlotSchedule, cron, from_celery

UTC = timezone.utc
NEW_YEAR = "2026-01-01T00:00:00Z"


def days(schedule: SlotSchedule, after: str, count: int) -> list[str]:
    return [slot[:10] for slot in first_slots(schedule, after, count)]


# -- a range with equal ends is that one value (croniter widens it to the whole field) ----------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        pytest.param("0 3-3 * * *", ["2026-01-01T03:00:00Z", "2026-01-02T03:00:00Z"], id="hour"),
        pytest.param("3-3 0 * * *", ["2026-01-01T00:03:00Z", "2026-01-02T00:03:00Z"], id="minute"),
        pytest.param("0 0 1 10-10 *", ["2026-10-01T00:00:00Z", "2027-10-01T00:00:00Z"], id="month"),
        pytest.param(
            "5-5 0 0 * * *", ["2026-01-01T00:00:05Z", "2026-01-02T00:00:05Z"], id="second"
        ),
        pytest.param(
            "0 0 * * sat-sat/2", ["2026-01-03T00:00:00Z", "2026-01-10T00:00:00Z"], id="stepped"
        ),
    ],
)
def test_a_range_with_equal_ends_is_one_value(expr: str, expected: list[str]) -> None:
    assert first_slots(cron(expr), NEW_YEAR, 2) == expected


def test_a_one_day_range_that_february_lacks_never_fires() -> None:
    with pytest.raises(ScheduleError, match="never fires"):
        cron("0 0 30-30 2 *").validate()


# -- the day rule: Vixie cron's, with #, L and W too -----------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # day 2 or 17, or the third Thursday
        pytest.param(
            "0 0 2,17 * thu#3",
            ["2026-01-02", "2026-01-15", "2026-01-17", "2026-02-02", "2026-02-17", "2026-02-19"],
            id="list-or-nth",
        ),
        # the weekday nearest the 15th (Thu 15 Jan; Sun 15 Feb -> Mon 16), or a Monday
        pytest.param(
            "0 0 15W * mon",
            ["2026-01-05", "2026-01-12", "2026-01-15", "2026-01-19", "2026-01-26", "2026-02-02"],
            id="W-or-monday",
        ),
        pytest.param(
            "0 0 15 * fri#2",
            ["2026-01-09", "2026-01-15", "2026-02-13", "2026-02-15"],
            id="day-or-nth",
        ),
        pytest.param(
            "0 0 L * fri#1",
            ["2026-01-02", "2026-01-31", "2026-02-06", "2026-02-28"],
            id="L-or-nth",
        ),
        pytest.param(
            "0 0 1 * L5",
            ["2026-01-30", "2026-02-01", "2026-02-27", "2026-03-01"],
            id="day-or-last-friday",
        ),
        pytest.param(
            "0 0 1 * 5L",
            ["2026-01-30", "2026-02-01", "2026-02-27", "2026-03-01"],
            id="day-or-last-friday-quartz-spelling",
        ),
        # a day field starting with '*' makes it AND: odd days that are Mondays
        pytest.param(
            "0 0 */2 * mon",
            ["2026-01-05", "2026-01-19", "2026-02-09", "2026-02-23"],
            id="star-step-ands",
        ),
        # the same odd days written without '*': OR
        pytest.param(
            "0 0 1-31/2 * mon",
            ["2026-01-03", "2026-01-05", "2026-01-07", "2026-01-09", "2026-01-11", "2026-01-12"],
            id="no-star-ors",
        ),
        # a restricted day of month with '*' in day of week: only the day of month
        pytest.param("0 0 13 * *", ["2026-01-13", "2026-02-13"], id="dow-star"),
        # '?' is a star
        pytest.param("0 0 ? * mon", ["2026-01-05", "2026-01-12"], id="question-mark"),
    ],
)
def test_the_day_fields_follow_vixie_crons_rule(expr: str, expected: list[str]) -> None:
    assert days(cron(expr), NEW_YEAR, len(expected)) == expected


def test_an_or_with_an_impossible_nth_weekday_still_fires_on_the_days_of_month() -> None:
    # April 2026 has no fifth Sunday: the 20th to the 25th fire, every minute.
    schedule = cron("* * 20-25 apr sun#5")
    schedule.validate()
    assert first_slots(schedule, NEW_YEAR, 2) == ["2026-04-20T00:00:00Z", "2026-04-20T00:01:00Z"]


# -- day of week steps: N/S is N-7/S ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # {Mon, Thu, Sun}: Sun 4, Mon 5, Thu 8, Sun 11
        pytest.param("0 0 * * 1/3", ["2026-01-04", "2026-01-05", "2026-01-08", "2026-01-11"]),
        pytest.param("0 0 * * 1-7/3", ["2026-01-04", "2026-01-05", "2026-01-08", "2026-01-11"]),
        pytest.param("0 0 * * mon/3", ["2026-01-04", "2026-01-05", "2026-01-08", "2026-01-11"]),
        # 0-7/3 = {Sun, Wed, Sat}: Sat 3, Sun 4, Wed 7
        pytest.param("0 0 * * */3", ["2026-01-03", "2026-01-04", "2026-01-07"]),
        # minutes: 50/4 = 50, 54, 58
        pytest.param("50/4 0 * * *", ["2026-01-01", "2026-01-01", "2026-01-01", "2026-01-02"]),
    ],
)
def test_a_start_with_a_step_runs_to_the_end_of_the_field(expr: str, expected: list[str]) -> None:
    assert days(cron(expr), NEW_YEAR, len(expected)) == expected


def test_a_start_with_a_step_in_minutes() -> None:
    assert first_slots(cron("50/4 0 * * *"), NEW_YEAR, 3) == [
        "2026-01-01T00:50:00Z",
        "2026-01-01T00:54:00Z",
        "2026-01-01T00:58:00Z",
    ]


# -- the next slot: L, W and # at the edges of a month; whole fields, seconds and macros ---------


#: (cron expression, after, its next slot): worked out by hand
NEXT_SLOT = [
    # 1 Feb is a Sunday: the nearest weekday is Monday the 2nd
    ("0 0 1W * *", "2026-01-31T00:00:00Z", "2026-02-02T00:00:00Z"),
    # 1 Aug is a Saturday: not Friday 31 July (another month) but Monday the 3rd
    ("0 0 1W * *", "2026-07-15T00:00:00Z", "2026-08-03T00:00:00Z"),
    # 31 May is a Sunday: not Monday 1 June but Friday the 29th
    ("0 0 31W * *", "2026-05-01T00:00:00Z", "2026-05-29T00:00:00Z"),
    # 28 Feb is a Saturday: Friday the 27th
    ("0 0 28W 2 *", "2026-01-01T00:00:00Z", "2026-02-27T00:00:00Z"),
    # a day the month lacks never fires in it: 30W skips February
    ("0 0 30W * *", "2026-01-31T00:00:00Z", "2026-03-30T00:00:00Z"),
    # the last weekday: Sunday 31 May -> Friday 29
    ("0 0 LW * *", "2026-05-01T00:00:00Z", "2026-05-29T00:00:00Z"),
    # the fifth Monday: none in February 2026, then 30 March
    ("0 0 * * mon#5", "2026-02-01T00:00:00Z", "2026-03-30T00:00:00Z"),
    # 7 is Sunday in every form: the last Sunday of February is the 22nd
    ("0 0 * 2 7L", "2026-01-01T00:00:00Z", "2026-02-22T00:00:00Z"),
    ("0 0 * 2 7#4", "2026-01-01T00:00:00Z", "2026-02-22T00:00:00Z"),
    ("0 0 L 2 *", "2027-12-31T00:00:00Z", "2028-02-29T00:00:00Z"),
    # whole fields, seconds and macros
    ("*/5 * * * *", "2026-05-04T12:03:10Z", "2026-05-04T12:05:00Z"),
    ("*/10 * * * * *", "2026-05-04T12:00:05Z", "2026-05-04T12:00:10Z"),
    ("30 0 12 * * *", "2026-05-04T11:00:00Z", "2026-05-04T12:00:30Z"),
    ("0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
    ("0 0 L * *", "2028-02-01T00:00:00Z", "2028-02-29T00:00:00Z"),
    ("0 0 L 2 *", "2026-01-01T00:00:00Z", "2026-02-28T00:00:00Z"),
    ("0 0 * * 5#3", "2026-01-01T00:00:00Z", "2026-01-16T00:00:00Z"),
    ("0 0 15W * *", "2026-02-01T00:00:00Z", "2026-02-16T00:00:00Z"),
    ("0 0 13 * 5", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
    ("0 9 * * mon-fri", "2026-01-02T10:00:00Z", "2026-01-05T09:00:00Z"),
    ("@yearly", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("@annually", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("@monthly", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
    ("@weekly", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"),
    ("@daily", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
    ("@midnight", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
    ("@hourly", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"),
]


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [pytest.param(*row, id=f"{row[0]} after {row[1]}") for row in NEXT_SLOT],
)
def test_cron_fires_at_the_hand_checked_instant(expr: str, after: str, expected: str) -> None:
    assert first_slots(cron(expr), after, 1) == [expected]


def test_day_rule_definitions_are_normalised() -> None:
    # With a '*' day field both rules AND the day fields: one definition, one description.
    assert from_celery(crontab(minute=0, hour=0, day_of_week="mon")).describe() == "cron 0 0 * * 1"
    anded = from_celery(crontab(minute=0, hour=0, day_of_month="1-7", day_of_week="mon"))
    assert anded.describe() == "cron 0 0 1-7 * 1 (day of month and day of week)"
    # Celery's AND: the Monday among the 1st to the 7th (2 Feb, 2 Mar)
    assert days(anded, NEW_YEAR, 2) == ["2026-01-05", "2026-02-02"]


# -- a Celery crontab in a DST gap: the project's rule (docs/schedules.md, parity) -----------------


def test_a_celery_crontab_in_a_dst_gap_fires_at_the_end_of_the_gap() -> None:
    """Berlin skips 02:00-03:00 on 2026-03-29: 02:30 fires at 03:00 CEST (01:00Z), as a cron
    string or a daily schedule would; Celery's own beat would use 03:30 CEST (01:30Z)."""
    schedule = from_celery(crontab(minute=30, hour=2), "Europe/Berlin")
    assert first_slots(schedule, "2026-03-28T00:00:00Z", 3) == [
        "2026-03-28T01:30:00Z",  # 02:30 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST, the first instant after the gap
        "2026-03-30T00:30:00Z",  # 02:30 CEST
    ]
    assert schedule.next_slot(utc("2026-03-29T00:59:59Z")) == utc("2026-03-29T01:00:00Z")
    as_cron = cron("30 2 * * *", "Europe/Berlin")
    assert first_slots(as_cron, "2026-03-28T00:00:00Z", 3) == first_slots(
        schedule, "2026-03-28T00:00:00Z", 3
    )


def test_previous_slot_agrees_at_second_precision() -> None:
    schedule = cron("*/20 * * * * *")
    slot = utc("2026-01-01T00:00:40Z")
    assert schedule.previous_slot(slot) == slot
    assert schedule.previous_slot(slot - timedelta(microseconds=1)) == utc("2026-01-01T00:00:20Z")
    assert list(schedule.slots(slot - timedelta(microseconds=1), slot)) == [slot]


def test_the_cron_dialect_example_runs() -> None:
    script = Path(__file__).resolve().parent.parent / "examples" / "cron_dialect" / "run.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--after", "2026-01-01T00:00:00+00:00"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    # odd days AND Mondays: Mon 5 and Mon 19 January
    assert "'0 0 */2 * mon'  -- odd days AND Mondays" in completed.stdout
    assert "2026-01-19 00:00:00 UTC   Mon 2026-01-19 00:00:00 UTC" in completed.stdout
    assert "hour field '22-2': range '22-2' runs backwards" in completed.stdout
    assert "cron '0 0 30 2 *' never fires" in completed.stdout
