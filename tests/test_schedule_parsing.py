"""The configuration string forms of schedules."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from celery_fork_scheduler.durations import parse_duration
from celery_fork_scheduler.errors import ScheduleError
from celery_fork_scheduler.schedules import SlotSchedule, at, cron, every
from celery_fork_scheduler.schedules.parsing import parse_schedule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("every 5 minutes", every(5).minutes, id="every-5-minutes"),
        pytest.param("every 10s", every(10).seconds, id="every-10s"),
        pytest.param("every 10 seconds", every(10).seconds, id="every-10-seconds"),
        pytest.param("every 2h", every(2).hours, id="every-2h"),
        pytest.param("every 30m", every(30).minutes, id="every-30m"),
        pytest.param("every minute", every(1).minute, id="every-minute"),
        pytest.param("every second", every(1).second, id="every-second"),
        pytest.param("every hour", every(1).hour, id="every-hour"),
        pytest.param("every 2 weeks", every(2).weeks, id="every-2-weeks"),
        pytest.param("every day", every(1).day, id="every-day"),
        pytest.param("every 3d", every(3).days, id="every-3d"),
        pytest.param("at 10:30", at("10:30"), id="at"),
        pytest.param("at 10:30, 22:30", at("10:30", "22:30"), id="at-two-times"),
        pytest.param("at 10:30:15", at("10:30:15"), id="at-seconds"),
        pytest.param("daily at 10:30", at("10:30"), id="daily-at"),
        pytest.param("daily", at("00:00"), id="daily"),
        pytest.param("monday at 09:00", every().monday.at("09:00"), id="monday-at"),
        pytest.param("every monday at 09:00", every().monday.at("09:00"), id="every-monday-at"),
        pytest.param("every sunday", every().sunday, id="every-sunday"),
        pytest.param("Friday at 17:00", every().friday.at("17:00"), id="capitalised"),
        pytest.param(
            "every mon, fri at 09:00",
            every().monday.at("09:00").__class__(weekdays=(0, 4), times=at("09:00").times),
            id="weekday-list",
        ),
        pytest.param("every 2 days at 10:30", every(2).days.at("10:30"), id="every-2-days-at"),
        pytest.param(
            "monthly on 1,15,-1 at 00:00",
            every(1).month.on(1, 15, -1).at("00:00"),
            id="monthly-on",
        ),
        pytest.param("monthly on -1", every(1).month.on(-1), id="monthly-last-day"),
        pytest.param(
            "every 3 months on 1 at 06:00",
            every(3).months.on(1).at("06:00"),
            id="every-3-months",
        ),
        pytest.param("cron */5 * * * *", cron("*/5 * * * *"), id="cron-prefix"),
        pytest.param("*/5 * * * *", cron("*/5 * * * *"), id="bare-cron"),
        pytest.param("0 9 * * mon-fri", cron("0 9 * * mon-fri"), id="bare-cron-names"),
        pytest.param("*/10 * * * * *", cron("*/10 * * * * *"), id="bare-six-field-cron"),
        pytest.param("@daily", cron("@daily"), id="macro-daily"),
        pytest.param("@hourly", cron("@hourly"), id="macro-hourly"),
        pytest.param("@Yearly", cron("@yearly"), id="macro-case"),
        pytest.param(
            "daily at 10:30 in Europe/Berlin",
            at("10:30").with_timezone("Europe/Berlin"),
            id="zone-suffix",
        ),
        pytest.param(
            "cron 0 9 * * * in America/New_York",
            cron("0 9 * * *", "America/New_York"),
            id="cron-zone-suffix",
        ),
        pytest.param("  every   5   minutes ", every(5).minutes, id="extra-spaces"),
    ],
)
def test_each_form_parses_to_its_schedule(text: str, expected: SlotSchedule) -> None:
    assert parse_schedule(text) == expected


def test_the_error_quotes_the_original_text() -> None:
    with pytest.raises(ScheduleError, match=r"^cannot parse schedule 'every 5 parsecs'"):
        parse_schedule("every 5 parsecs")


def test_a_non_string_is_refused() -> None:
    with pytest.raises(ScheduleError, match="not a string"):
        parse_schedule(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(every(5).minutes, id="interval"),
        pytest.param(every(1).hour, id="hour"),
        pytest.param(at("10:30", "22:30:15"), id="daily"),
        pytest.param(every(2).days.at("10:30"), id="every-2-days"),
        pytest.param(every().wednesday.at("09:00"), id="weekly"),
        pytest.param(every(1).month.on(1, 15, -1).at("06:00"), id="monthly"),
        pytest.param(cron("*/10 * * * * *", "Europe/Berlin"), id="cron"),
        pytest.param(cron("@weekly"), id="macro"),
    ],
)
def test_describe_parses_back_to_the_same_schedule(schedule: SlotSchedule) -> None:
    assert parse_schedule(schedule.describe()) == schedule


def test_a_parsed_schedule_fires_where_it_says() -> None:
    schedule = parse_schedule("every monday at 09:00 in Europe/Berlin")
    after = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert schedule.next_slot(after) == datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "text",
    [
        "every \uff15 minutes",
        "at \uff11\uff10:\uff13\uff10",
        "daily at 10:\uff13\uff10",
        "monday at \uff10\uff19:00",
        "monthly on \uff11",
    ],
)
def test_digits_other_than_ascii_are_refused_as_cron_refuses_them(text: str) -> None:
    """Python's ``\\d`` and ``int`` take fullwidth and other Unicode digits; a cron field does
    not (cronsim neither). A schedule string takes ASCII digits only, as its cron form."""
    with pytest.raises(ScheduleError, match="cannot parse schedule"):
        parse_schedule(text)


def test_a_duration_with_digits_other_than_ascii_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a number of seconds"):
        parse_duration("\uff15 s", what="x")
