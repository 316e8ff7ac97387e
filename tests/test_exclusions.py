"""Exclusion dates and calendars: parsing, matching in the entry's zone, validation, catch-up.

Pure: no Redis (the scheduler's handling of excluded slots is in
tests/test_scheduler_exclusions.py).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery

from celery_fork_scheduler.catchup import slots_due
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.entry import Entry, entry_from_config, entry_from_dict, entry_to_dict
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.exclusions import (
    ExclusionError,
    compile_exclusions,
    normalise_items,
)

UTC = timezone.utc
CALENDARS = {"holidays-de": ("12-25", "12-26", "2026-12-24..2027-01-01"), "bridge": ("05-15",)}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def build(name: str = "x", zone: str = "UTC", **definition: Any) -> Entry:
    return entry_from_config(
        name,
        {"task": "t", "schedule": "every 1 hour", **definition},
        default_timezone=ZoneInfo(zone),
        calendars=CALENDARS,
    )


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "canonical"),
    [
        ("2026-12-24", "2026-12-24"),
        (date(2026, 12, 24), "2026-12-24"),
        ("2026-12-24..2027-01-01", "2026-12-24..2027-01-01"),
        ("2026-12-24 .. 2027-01-01", "2026-12-24..2027-01-01"),
        (["2026-12-24", "2027-01-01"], "2026-12-24..2027-01-01"),
        ((date(2026, 12, 24), date(2027, 1, 1)), "2026-12-24..2027-01-01"),
        ("12-25", "12-25"),
        ("02-29", "02-29"),
    ],
    ids=["date", "date-object", "range", "range-spaces", "list", "tuple", "yearly", "leap-day"],
)
def test_each_item_form_has_one_canonical_text(item: object, canonical: str) -> None:
    assert normalise_items([item]) == (canonical,)


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("2026-13-01", "not a date"),
        ("2026-02-30", "not a date"),
        ("02-30", "no such day of the year"),
        ("13-01", "no such day of the year"),
        ("2027-01-01..2026-12-24", "must not end before it starts"),
        (["2026-12-24"], "list of 2 dates"),
        ("christmas", "not a date"),
        (datetime(2026, 12, 24, 9, 0), "no time of day"),
        (20261224, "not a date"),
        ("2026-12-24..", "not a date"),
    ],
    ids=[
        "month-13",
        "feb-30",
        "yearly-feb-30",
        "yearly-month-13",
        "backwards-range",
        "one-item-list",
        "word",
        "datetime",
        "number",
        "open-range",
    ],
)
def test_a_bad_item_is_refused_naming_it(item: object, words: str) -> None:
    with pytest.raises(ExclusionError, match=words):
        normalise_items([item])


def test_repeated_items_are_kept_once_in_order() -> None:
    assert normalise_items(["12-25", "2026-01-01", "12-25"]) == ("12-25", "2026-01-01")


def test_a_set_of_items_gets_one_order_on_every_replica() -> None:
    assert normalise_items({"12-25", "2026-01-01", date(2025, 5, 1)}) == (
        "12-25",
        "2025-05-01",
        "2026-01-01",
    )


# -- matching ----------------------------------------------------------------------------------


def test_a_slot_late_in_the_utc_day_is_the_next_day_in_tokyo() -> None:
    tokyo = compile_exclusions(("2026-12-25",), ZoneInfo("Asia/Tokyo"))
    in_utc = compile_exclusions(("2026-12-25",), UTC)
    assert tokyo is not None and in_utc is not None
    slot = utc("2026-12-24T23:30:00+00:00")  # 2026-12-25 08:30 in Tokyo
    assert tokyo.excludes(slot)
    assert not in_utc.excludes(slot)
    assert not tokyo.excludes(utc("2026-12-25T15:30:00+00:00"))  # 12-26 00:30 in Tokyo


@pytest.mark.parametrize(
    ("local", "excluded"),
    [
        ("2026-03-29T00:30:00+01:00", True),  # before the spring-forward gap
        ("2026-03-29T03:30:00+02:00", True),  # after it: still the 29th
        ("2026-03-29T23:59:00+02:00", True),
        ("2026-03-30T00:00:00+02:00", False),
        ("2026-10-25T02:30:00+02:00", True),  # the repeated hour, first time
        ("2026-10-25T02:30:00+01:00", True),  # and second time
        ("2026-10-24T23:59:59+02:00", False),
    ],
)
def test_dst_days_are_matched_by_their_local_date(local: str, excluded: bool) -> None:
    berlin = compile_exclusions(("2026-03-29", "2026-10-25"), ZoneInfo("Europe/Berlin"))
    assert berlin is not None
    assert berlin.excludes(utc(local)) is excluded


def test_a_yearly_date_matches_every_year_and_02_29_only_leap_years() -> None:
    yearly = compile_exclusions(("12-25", "02-29"), UTC)
    assert yearly is not None
    assert all(yearly.excludes_day(date(year, 12, 25)) for year in (1999, 2026, 2100))
    assert yearly.excludes_day(date(2028, 2, 29))
    assert not yearly.excludes_day(date(2027, 2, 28))
    assert not yearly.excludes_day(date(2027, 3, 1))


def test_a_range_spanning_the_year_end_includes_both_ends() -> None:
    span = compile_exclusions(("2026-12-24..2027-01-01",), UTC)
    assert span is not None
    days = [date(2026, 12, 23) + timedelta(days=n) for n in range(11)]
    assert [span.excludes_day(day) for day in days] == [False] + [True] * 9 + [False]


def test_overlapping_and_adjacent_ranges_are_merged() -> None:
    merged = compile_exclusions(
        (
            "2026-01-01..2026-01-05",
            "2026-01-06..2026-01-08",
            "2026-01-03..2026-01-04",
            "2026-02-01..2026-02-01",
        ),
        UTC,
    )
    assert merged is not None
    assert (merged.starts, merged.ends) == (
        (date(2026, 1, 1).toordinal(), date(2026, 2, 1).toordinal()),
        (date(2026, 1, 8).toordinal(), date(2026, 2, 1).toordinal()),
    )
    assert merged.excludes_day(date(2026, 2, 1)) and not merged.excludes_day(date(2026, 1, 9))


def test_no_items_compile_to_none() -> None:
    assert compile_exclusions((), UTC) is None


# -- entries -----------------------------------------------------------------------------------


def test_an_entry_excludes_in_its_own_time_zone_else_the_apps() -> None:
    own = build(exclude=["2026-12-25"], timezone="Asia/Tokyo")
    app_zone = build(zone="Asia/Tokyo", exclude=["2026-12-25"])
    plain = build(exclude=["2026-12-25"])
    slot = utc("2026-12-24T23:30:00+00:00")
    assert own.excludes(slot) and app_zone.excludes(slot)
    assert not plain.excludes(slot)


def test_calendars_and_own_items_add_up() -> None:
    entry = build(exclude="2026-05-01", calendar=["holidays-de", "bridge"])
    assert entry.exclude == ("2026-05-01",)
    assert entry.calendar == ("holidays-de", "bridge")
    for day in ("2026-05-01", "2026-05-15", "2026-12-25", "2027-01-01", "2030-12-26"):
        assert entry.excludes(utc(f"{day}T12:00:00+00:00")), day
    assert not entry.excludes(utc("2026-05-02T12:00:00+00:00"))


def test_an_entry_without_exclusions_excludes_nothing() -> None:
    entry = build()
    assert entry.exclusions is None and not entry.excludes(utc("2026-12-25T12:00:00+00:00"))


def test_the_stored_form_round_trips_and_omits_empty_fields() -> None:
    entry = build(exclude=[("2026-12-24", "2027-01-01"), "12-25"], calendar="bridge")
    data = entry_to_dict(entry)
    assert data["exclude"] == ["2026-12-24..2027-01-01", "12-25"]
    assert data["calendar"] == ["bridge"]
    back = entry_from_dict("x", data, default_timezone=UTC, calendars=CALENDARS)
    assert (back.exclude, back.calendar) == (entry.exclude, entry.calendar)
    assert "exclude" not in entry_to_dict(build()) and "calendar" not in entry_to_dict(build())


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "field", "words"),
    [
        ({"exclude": ["2026-02-30"]}, "exclude", "'2026-02-30'"),
        ({"exclude": "12-32"}, "exclude", "'12-32'"),
        ({"exclude": {"day": "12-25"}}, "exclude", "must be a list"),
        ({"exclude": [["2026-01-02", "2026-01-01"]]}, "exclude", "end before it starts"),
        ({"calendar": "holidays-fr"}, "calendar", "unknown calendar 'holidays-fr'"),
        ({"calendar": ["bridge", 3]}, "calendar", "calendar name or a list"),
    ],
    ids=["bad-date", "bad-yearly", "dict", "backwards", "unknown-calendar", "not-a-name"],
)
def test_bad_exclusions_name_the_entry_and_the_field(
    definition: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as refused:
        build("payroll", **definition)
    assert refused.value.entry == "payroll"
    assert refused.value.field == field


def test_an_unknown_calendar_lists_the_defined_ones() -> None:
    with pytest.raises(ConfigError, match="defines: 'bridge', 'holidays-de'"):
        build(calendar="nope")


def test_the_calendars_setting_is_checked_naming_the_calendar_and_item() -> None:
    app = Celery("calendars", set_as_current=False)
    app.conf.fork_scheduler_calendars = {"ok": ["12-25"], "holidays-de": ["2026-12-24", "soon"]}
    with pytest.raises(ConfigError, match=r"calendar 'holidays-de'.*'soon'") as refused:
        read_settings(app.conf)
    assert refused.value.field == "fork_scheduler_calendars"
    app.conf.fork_scheduler_calendars = ["12-25"]
    with pytest.raises(ConfigError, match="must be a dict"):
        read_settings(app.conf)
    app.conf.fork_scheduler_calendars = {"ok": ("12-25", ("2026-01-01", "2026-01-02"))}
    assert read_settings(app.conf).calendars == {"ok": ("12-25", "2026-01-01..2026-01-02")}


# -- catch-up ----------------------------------------------------------------------------------


def test_latest_catch_up_fires_the_latest_slot_that_was_not_excluded() -> None:
    entry = build(schedule="daily at 09:00", exclude=["2026-12-25"])
    due = slots_due(
        entry,
        utc("2026-12-23T10:00:00+00:00"),
        utc("2026-12-25T12:00:00+00:00"),
        grace=timedelta(seconds=5),
    )
    assert due == [utc("2026-12-24T09:00:00+00:00")]


def test_an_excluded_recent_slot_does_not_stand_in_for_the_missed_one() -> None:
    entry = build(schedule="daily at 09:00", exclude=["2026-12-25"])
    due = slots_due(
        entry,
        utc("2026-12-23T10:00:00+00:00"),
        utc("2026-12-25T09:00:01+00:00"),
        grace=timedelta(seconds=5),
    )
    # The missed 24th fires; the 25th is claimed to be recorded skipped.
    assert due == [utc("2026-12-24T09:00:00+00:00"), utc("2026-12-25T09:00:00+00:00")]


def test_no_catch_up_when_every_missed_slot_was_excluded() -> None:
    entry = build(schedule="daily at 09:00", calendar="holidays-de")
    due = slots_due(
        entry,
        utc("2026-12-24T08:00:00+00:00"),
        utc("2026-12-27T12:00:00+00:00"),
        grace=timedelta(seconds=5),
    )
    assert due == []
