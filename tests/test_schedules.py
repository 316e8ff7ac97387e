"""Schedules: builders, intervals, calendars, cron, codecs and Celery compatibility."""

from __future__ import annotations

import dataclasses
import json
import pickle
from datetime import datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import celery.beat
import celery.schedules
import pytest
from celery import Celery

from celery_fork_scheduler.errors import ScheduleError
from celery_fork_scheduler.schedules import (
    Cron,
    Daily,
    Interval,
    Monthly,
    SlotSchedule,
    Solar,
    Weekly,
    at,
    coerce_schedule,
    cron,
    every,
    from_celery,
    schedule_from_dict,
)

UTC = timezone.utc


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def following(schedule: SlotSchedule, after: str, count: int) -> list[str | None]:
    found: list[str | None] = []
    moment: datetime | None = utc(after)
    for _ in range(count):
        assert moment is not None
        moment = schedule.next_slot(moment)
        found.append(iso(moment))
    return found


# --- intervals ---------------------------------------------------------------------------


def test_every_five_minutes_is_anchored_at_the_epoch() -> None:
    assert following(every(5).minutes, "2026-05-04T12:03:10Z", 2) == [
        "2026-05-04T12:05:00Z",
        "2026-05-04T12:10:00Z",
    ]


def test_next_slot_is_strictly_after_a_slot() -> None:
    assert iso(every(5).minutes.next_slot(utc("2026-05-04T12:05:00Z"))) == "2026-05-04T12:10:00Z"


def test_an_offset_shifts_the_phase() -> None:
    schedule = every(1).hour.offset(minutes=30)
    assert following(schedule, "2026-05-04T12:45:00Z", 1) == ["2026-05-04T13:30:00Z"]
    assert schedule.describe() == "every hour offset by 30 minutes"


def test_starting_anchors_the_first_slot() -> None:
    schedule = every(10).minutes.starting(utc("2026-01-01T00:07:00Z"))
    assert following(schedule, "2025-06-01T00:00:00Z", 2) == [
        "2026-01-01T00:07:00Z",
        "2026-01-01T00:17:00Z",
    ]
    assert schedule.previous_slot(utc("2026-01-01T00:06:59Z")) is None
    assert iso(schedule.previous_slot(utc("2026-01-01T00:20:00Z"))) == "2026-01-01T00:17:00Z"


def test_weeks_are_utc_intervals_from_the_epoch_thursday() -> None:
    assert following(every(1).week, "2026-01-01T00:00:00Z", 1) == ["2026-01-08T00:00:00Z"]


@pytest.mark.parametrize(
    ("singular", "plural"),
    [
        pytest.param(every(1).second, every(1).seconds, id="second"),
        pytest.param(every(1).minute, every(1).minutes, id="minute"),
        pytest.param(every(1).hour, every(1).hours, id="hour"),
        pytest.param(every(1).day, every(1).days, id="day"),
        pytest.param(every(1).week, every(1).weeks, id="week"),
        pytest.param(every(1).month, every(1).months, id="month"),
    ],
)
def test_singular_and_plural_units_mean_the_same(
    singular: SlotSchedule, plural: SlotSchedule
) -> None:
    assert singular == plural


@pytest.mark.parametrize(
    "n", [0, -1, 1.5, True, "5"], ids=["zero", "negative", "float", "bool", "str"]
)
def test_every_rejects_anything_but_a_positive_int(n: Any) -> None:
    with pytest.raises(ScheduleError, match="positive integer"):
        every(n)


# --- calendars ---------------------------------------------------------------------------


def test_at_fires_daily_at_each_time_in_order() -> None:
    assert following(at("22:30", "10:30"), "2026-05-04T12:00:00Z", 3) == [
        "2026-05-04T22:30:00Z",
        "2026-05-05T10:30:00Z",
        "2026-05-05T22:30:00Z",
    ]


def test_at_accepts_seconds() -> None:
    assert following(at("10:30:15"), "2026-05-04T12:00:00Z", 1) == ["2026-05-05T10:30:15Z"]


@pytest.mark.parametrize("bad", ["25:00", "10:60", "10:30:60", "ten", "", "1030"])
def test_a_bad_time_is_named_in_the_error(bad: str) -> None:
    with pytest.raises(ScheduleError, match=f"invalid time '{bad}'"):
        at(bad)


def test_at_needs_a_time() -> None:
    with pytest.raises(ScheduleError, match="at least one time"):
        at()


def test_a_day_without_at_fires_at_local_midnight() -> None:
    schedule = every(1).day.with_timezone("Europe/Berlin")
    assert following(schedule, "2026-05-04T12:00:00Z", 1) == ["2026-05-04T22:00:00Z"]


@pytest.mark.parametrize(
    ("weekday", "expected"),
    [
        ("monday", "2026-01-05"),
        ("tuesday", "2026-01-06"),
        ("wednesday", "2026-01-07"),
        ("thursday", "2026-01-08"),
        ("friday", "2026-01-02"),
        ("saturday", "2026-01-03"),
        ("sunday", "2026-01-04"),
    ],
)
def test_every_weekday_fires_on_that_day_at_midnight_by_default(
    weekday: str, expected: str
) -> None:
    # 2026-01-01 is a Thursday.
    schedule = getattr(every(), weekday)
    assert following(schedule, "2026-01-01T00:00:00Z", 1) == [f"{expected}T00:00:00Z"]


def test_every_monday_at_nine() -> None:
    schedule = every().monday.at("09:00")
    assert following(schedule, "2026-01-05T09:00:00Z", 1) == ["2026-01-12T09:00:00Z"]
    assert schedule.describe() == "every monday at 09:00"


def test_weekday_schedules_take_every_one() -> None:
    with pytest.raises(ScheduleError, match=r"every\(2\)\.monday"):
        every(2).monday  # noqa: B018


def test_monthly_on_first_fifteenth_and_last_day() -> None:
    schedule = every(1).month.on(1, 15, -1).at("00:00")
    assert following(schedule, "2026-01-31T00:00:00Z", 4) == [
        "2026-02-01T00:00:00Z",
        "2026-02-15T00:00:00Z",
        "2026-02-28T00:00:00Z",
        "2026-03-01T00:00:00Z",
    ]


@pytest.mark.parametrize(
    ("day", "after", "expected"),
    [
        pytest.param(-1, "2028-02-15T00:00:00Z", "2028-02-29T00:00:00Z", id="last-day-leap-feb"),
        pytest.param(-1, "2027-02-15T00:00:00Z", "2027-02-28T00:00:00Z", id="last-day-feb"),
        pytest.param(-2, "2028-02-15T00:00:00Z", "2028-02-28T00:00:00Z", id="second-to-last"),
        pytest.param(31, "2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z", id="31-skips-april"),
        pytest.param(30, "2026-01-30T00:00:00Z", "2026-03-30T00:00:00Z", id="30-skips-feb"),
        pytest.param(-1, "2026-04-30T00:00:00Z", "2026-05-31T00:00:00Z", id="last-day-may"),
    ],
)
def test_monthly_day_edges(day: int, after: str, expected: str) -> None:
    assert following(every(1).month.on(day), after, 1) == [expected]


def test_every_third_month_counts_from_january_1970() -> None:
    schedule = every(3).months.on(1).at("06:00")
    assert following(schedule, "2026-02-01T00:00:00Z", 2) == [
        "2026-04-01T06:00:00Z",
        "2026-07-01T06:00:00Z",
    ]


@pytest.mark.parametrize("day", [0, 32, -32])
def test_monthly_rejects_impossible_days(day: int) -> None:
    with pytest.raises(ScheduleError, match="days of month"):
        every(1).month.on(day)


# --- cron --------------------------------------------------------------------------------


def test_cron_is_evaluated_in_its_own_zone() -> None:
    assert following(cron("0 9 * * *", "America/New_York"), "2026-07-01T00:00:00Z", 1) == [
        "2026-07-01T13:00:00Z"
    ]


def test_month_ends_follow_the_calendar() -> None:
    found = following(cron("0 0 L * *"), "2027-12-31T12:00:00Z", 12)
    assert [day[:10] for day in found if day] == [
        "2028-01-31",
        "2028-02-29",
        "2028-03-31",
        "2028-04-30",
        "2028-05-31",
        "2028-06-30",
        "2028-07-31",
        "2028-08-31",
        "2028-09-30",
        "2028-10-31",
        "2028-11-30",
        "2028-12-31",
    ]


def test_an_impossible_date_fails_validation() -> None:
    schedule = cron("0 0 30 2 *")
    with pytest.raises(ScheduleError, match="never fires"):
        schedule.validate()
    assert schedule.next_slot(utc("2026-01-01T00:00:00Z")) is None


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(cron("0 0 29 2 *"), id="leap-day"),
        pytest.param(cron("*/10 * * * * *"), id="seconds"),
        pytest.param(every(5).minutes, id="interval"),
        pytest.param(every(1).month.on(31), id="monthly-31"),
        pytest.param(at("10:30"), id="at"),
    ],
)
def test_a_possible_schedule_validates(schedule: SlotSchedule) -> None:
    schedule.validate()


def test_cron_previous_slot_is_inclusive() -> None:
    schedule = cron("0 * * * *")
    assert iso(schedule.previous_slot(utc("2026-05-04T10:00:00Z"))) == "2026-05-04T10:00:00Z"
    assert iso(schedule.previous_slot(utc("2026-05-04T10:30:00Z"))) == "2026-05-04T10:00:00Z"


def test_slots_exclude_the_start_and_include_the_end() -> None:
    found = list(every(5).minutes.slots(utc("2026-05-04T12:00:00Z"), utc("2026-05-04T12:10:00Z")))
    assert [iso(slot) for slot in found] == ["2026-05-04T12:05:00Z", "2026-05-04T12:10:00Z"]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ScheduleError, match="naive datetime"):
        cron("* * * * *").next_slot(datetime(2026, 1, 1))


def test_slots_are_utc_whatever_the_zone_of_the_argument() -> None:
    after = datetime(2026, 5, 4, 14, 3, tzinfo=ZoneInfo("Europe/Berlin"))
    found = every(5).minutes.next_slot(after)
    assert found is not None
    assert found.tzinfo is UTC
    assert iso(found) == "2026-05-04T12:05:00Z"


# --- time zones --------------------------------------------------------------------------


def test_with_timezone_refuses_an_unknown_zone() -> None:
    with pytest.raises(ScheduleError, match="Nowhere/City"):
        at("10:30").with_timezone("Nowhere/City")


@pytest.mark.parametrize(
    "zone",
    [
        pytest.param("Europe/Berlin", id="name"),
        pytest.param(ZoneInfo("Europe/Berlin"), id="zoneinfo"),
    ],
)
def test_with_timezone_accepts_names_and_zoneinfo(zone: Any) -> None:
    assert at("10:30").with_timezone(zone).tz == ZoneInfo("Europe/Berlin")


def test_datetime_utc_becomes_the_utc_zone() -> None:
    assert at("10:30").with_timezone(UTC).tz == ZoneInfo("UTC")


def test_resolve_timezone_fills_only_a_missing_zone() -> None:
    own = at("10:30").with_timezone("Asia/Tokyo")
    assert own.resolve_timezone("Europe/Berlin") is own
    assert at("10:30").resolve_timezone("Europe/Berlin").tz == ZoneInfo("Europe/Berlin")
    assert at("10:30").resolve_timezone(None).tz is None


# --- value semantics ---------------------------------------------------------------------


def test_schedules_are_equal_and_hash_by_definition() -> None:
    assert at("10:30", "22:30") == at("22:30", "10:30")
    assert hash(at("10:30", "22:30")) == hash(at("22:30", "10:30"))
    assert len({cron("*/5 * * * *"), cron("*/5  *  * * *"), cron("*/10 * * * *")}) == 2


def test_schedules_are_immutable() -> None:
    schedule = every(5).minutes
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.every = timedelta(seconds=1)  # type: ignore[misc]


def test_schedules_survive_pickle() -> None:
    schedule = cron("*/5 * * * *", "Europe/Berlin")
    assert pickle.loads(pickle.dumps(schedule)) == schedule


@pytest.mark.parametrize(
    ("schedule", "text"),
    [
        pytest.param(every(5).minutes, "every 5 minutes", id="minutes"),
        pytest.param(every(1).minute, "every minute", id="minute"),
        pytest.param(every(10).seconds, "every 10 seconds", id="seconds"),
        pytest.param(every(90).seconds, "every 90 seconds", id="90-seconds"),
        pytest.param(every(2).hours, "every 2 hours", id="hours"),
        pytest.param(at("10:30"), "daily at 10:30", id="daily"),
        pytest.param(every(2).days.at("10:30"), "every 2 days at 10:30", id="every-2-days"),
        pytest.param(every().monday.at("09:00"), "every monday at 09:00", id="monday"),
        pytest.param(every(1).month.on(1, 15, -1), "monthly on 1,15,-1 at 00:00", id="monthly"),
        pytest.param(cron("*/5 * * * *"), "cron */5 * * * *", id="cron"),
        pytest.param(cron("@daily"), "cron @daily", id="macro"),
        pytest.param(
            at("10:30").with_timezone("Europe/Berlin"),
            "daily at 10:30 in Europe/Berlin",
            id="zone",
        ),
    ],
)
def test_describe_reads_like_the_config_form(schedule: SlotSchedule, text: str) -> None:
    assert schedule.describe() == text


ROUND_TRIP = [
    pytest.param(every(5).minutes, id="interval"),
    pytest.param(every(250).seconds.offset(seconds=0.5), id="interval-fraction"),
    pytest.param(every(1).hour.starting(utc("2026-01-01T00:07:00Z")), id="interval-start"),
    pytest.param(at("10:30", "22:30:15").with_timezone("Europe/Berlin"), id="daily"),
    pytest.param(every(2).days.at("10:30"), id="every-2-days"),
    pytest.param(every().friday.at("17:00"), id="weekly"),
    pytest.param(every(1).month.on(1, -1).at("06:00"), id="monthly"),
    pytest.param(cron("*/10 * * * * *", "Australia/Lord_Howe"), id="cron"),
    pytest.param(from_celery(celery.schedules.crontab(0, 0, "fri", "13")), id="crontab-and"),
    pytest.param(Solar(event="sunrise", lat=52.5, lon=13.4), id="solar"),
]


@pytest.mark.parametrize("schedule", ROUND_TRIP)
def test_to_dict_round_trips_through_json(schedule: SlotSchedule) -> None:
    data = json.loads(json.dumps(schedule.to_dict()))
    assert data["type"]
    assert "tz" in data
    assert schedule_from_dict(data) == schedule


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({}, "'type' is missing", id="no-type"),
        pytest.param({"type": "hourly"}, "'type' has an unknown value 'hourly'", id="bad-type"),
        pytest.param({"type": "cron"}, "'expr' is missing", id="no-expr"),
        pytest.param({"type": "cron", "expr": 5}, "'expr' has a bad value", id="bad-expr"),
        pytest.param({"type": "cron", "expr": "* * * * *", "tz": "Mars/Base"}, "'tz'", id="bad-tz"),
        pytest.param(
            {"type": "daily", "every": 1, "times": ["25:00"]}, "'times'.*25:00", id="bad-time"
        ),
        pytest.param(
            {"type": "weekly", "weekdays": ["someday"], "times": ["09:00"]},
            "'weekdays'",
            id="bad-weekday",
        ),
        pytest.param({"type": "interval", "every": "5"}, "'every'", id="bad-every"),
        pytest.param(
            {"type": "interval", "every": 5, "start": "yesterday"}, "'start'", id="bad-start"
        ),
    ],
)
def test_schedule_from_dict_names_the_bad_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        schedule_from_dict(data)


# --- Celery ------------------------------------------------------------------------------


def test_a_celery_crontab_becomes_the_equivalent_cron() -> None:
    schedule = from_celery(celery.schedules.crontab(minute="*/15", hour="9-17"))
    assert isinstance(schedule, Cron)
    assert schedule.expr == "0,15,30,45 9-17 * * *"
    assert following(schedule, "2026-05-04T17:50:00Z", 1) == ["2026-05-05T09:00:00Z"]


def test_a_celery_crontab_ands_day_of_month_with_day_of_week() -> None:
    # Friday the 13th: 2026-02-13 and 2026-03-13; Vixie cron would also fire every Friday.
    crontab = celery.schedules.crontab(minute=0, hour=0, day_of_month=13, day_of_week=5)
    schedule = from_celery(crontab)
    assert following(schedule, "2026-01-01T00:00:00Z", 2) == [
        "2026-02-13T00:00:00Z",
        "2026-03-13T00:00:00Z",
    ]
    assert schedule.describe() == "cron 0 0 13 * 5 (day of month and day of week)"


def test_a_crontab_is_read_in_the_entrys_zone_whatever_app_it_was_made_with() -> None:
    """As Celery's beat, which binds every schedule to its own app (round 61)."""
    app = Celery("tz-test", set_as_current=False)
    app.conf.timezone = "Asia/Tokyo"
    bound = celery.schedules.crontab(minute=0, hour=9, app=app)
    assert from_celery(bound, "Europe/Berlin").tz == ZoneInfo("Europe/Berlin")
    unbound = celery.schedules.crontab(minute=0, hour=9)
    assert from_celery(unbound, "Europe/Berlin").tz == ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("value", "every_seconds"),
    [
        pytest.param(celery.schedules.schedule(timedelta(seconds=30)), 30, id="celery-schedule"),
        pytest.param(timedelta(minutes=5), 300, id="timedelta"),
        pytest.param(90, 90, id="int"),
        pytest.param(0.5, 0.5, id="float"),
    ],
)
def test_intervals_from_celery_values_are_anchored(value: object, every_seconds: float) -> None:
    schedule = from_celery(value)
    assert schedule == Interval(every=timedelta(seconds=every_seconds))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(0, id="zero"),
        pytest.param(-5, id="negative"),
        pytest.param(True, id="bool"),
        pytest.param(object(), id="object"),
        pytest.param(None, id="none"),
    ],
)
def test_from_celery_refuses_what_is_no_schedule(value: object) -> None:
    with pytest.raises(ScheduleError):
        from_celery(value)


def test_a_celery_solar_becomes_a_solar_schedule() -> None:
    solar = celery.schedules.solar.__new__(celery.schedules.solar)  # no ephem needed
    solar.event, solar.lat, solar.lon = "sunset", 52.5, 13.4
    schedule = from_celery(solar)
    assert schedule == Solar(event="sunset", lat=52.5, lon=13.4)
    assert schedule.describe() == "solar sunset at (52.5, 13.4)"


def test_solar_slots_come_from_celerys_maths() -> None:
    schedule = Solar(event="sunrise", lat=52.5, lon=13.4)
    first = schedule.next_slot(utc("2026-06-21T00:00:00Z"))
    assert first is not None
    assert utc("2026-06-21T02:30:00Z") < first < utc("2026-06-21T03:00:00Z")
    assert schedule.previous_slot(first) == first


def test_solar_refuses_unknown_events() -> None:
    with pytest.raises(ScheduleError, match="moonrise"):
        Solar(event="moonrise", lat=0, lon=0)


def test_coerce_schedule_accepts_every_form_and_resolves_the_zone() -> None:
    assert coerce_schedule("daily at 10:30", "Europe/Berlin") == at("10:30").with_timezone(
        "Europe/Berlin"
    )
    assert coerce_schedule(every(5).minutes, "UTC").tz == ZoneInfo("UTC")
    assert coerce_schedule(cron("* * * * *", "Asia/Tokyo"), "UTC").tz == ZoneInfo("Asia/Tokyo")
    assert isinstance(coerce_schedule(celery.schedules.crontab()), Cron)
    assert isinstance(coerce_schedule(timedelta(seconds=5)), Interval)
    with pytest.raises(ScheduleError):
        coerce_schedule(["every 5 minutes"])


class _FixedClock:
    """Patches SlotSchedule.now, the only clock read (Celery compatibility only)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: str) -> None:
        monkeypatch.setattr(SlotSchedule, "now", lambda _self: utc(now))


def test_is_due_follows_celerys_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    _FixedClock(monkeypatch, "2026-05-04T12:05:01Z")
    schedule = every(5).minutes
    due, wait = schedule.is_due(utc("2026-05-04T12:00:00Z"))
    assert (due, wait) == (True, 299.0)
    due, wait = schedule.is_due(utc("2026-05-04T12:05:00Z"))
    assert (due, wait) == (False, 299.0)
    assert schedule.remaining_estimate(utc("2026-05-04T12:05:00Z")) == timedelta(seconds=299)


def test_is_due_treats_a_naive_last_run_as_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    _FixedClock(monkeypatch, "2026-05-04T12:05:01Z")
    assert cron("*/5 * * * *").is_due(datetime(2026, 5, 4, 12, 0)).is_due


def test_it_works_as_a_schedule_of_celerys_own_beat() -> None:
    app = Celery("beat-test", set_as_current=False)
    entry = celery.beat.ScheduleEntry(
        name="tick", task="tasks.tick", schedule=every(5).minutes, app=app
    )
    assert entry.schedule == every(5).minutes
    due, wait = entry.is_due()
    assert isinstance(due, bool)
    assert 0 <= wait <= 300


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(Daily(times=(time(1, 2),)), id="daily"),
        pytest.param(Weekly(weekdays=(6, 0)), id="weekly"),
        pytest.param(Monthly(days=(-1, 1)), id="monthly"),
    ],
)
def test_calendar_classes_can_be_built_directly(schedule: SlotSchedule) -> None:
    schedule.validate()
    assert schedule_from_dict(schedule.to_dict()) == schedule
