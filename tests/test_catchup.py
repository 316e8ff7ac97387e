"""``catchup.slots_due``: which slots to claim now, checked by hand against fixed instants.

Pure: no clock, no Redis. Unless a case says otherwise the entry fires every minute, the last
claimed slot (``after``) is 10:01:00, the grace is 5 s, and ``now`` is 10:05:30 — so 10:02,
10:03, 10:04 and 10:05 were missed and no slot is recent.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_fork_scheduler import every
from celery_fork_scheduler.catchup import MAX_CATCH_UP_SLOTS, slots_due
from celery_fork_scheduler.entry import Entry, entry_from_config

GRACE = timedelta(seconds=5)


def utc(time_of_day: str) -> datetime:
    return datetime.fromisoformat(f"2026-03-02T{time_of_day}+00:00")


def entry(schedule: Any = None, **policies: Any) -> Entry:
    definition = {"task": "t", "schedule": schedule or every(1).minutes, **policies}
    return entry_from_config("e", definition, default_timezone=timezone.utc)


def due(
    the_entry: Entry,
    after: str = "10:01:00",
    now: str = "10:05:30",
    *,
    grace: timedelta = GRACE,
    window: timedelta | None = None,
) -> list[str]:
    slots = slots_due(the_entry, utc(after), utc(now), grace=grace, window=window)
    return [slot.strftime("%H:%M:%S") for slot in slots]


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        pytest.param({"catchup": "skip"}, [], id="skip"),
        pytest.param({}, ["10:05:00"], id="latest-is-the-default"),
        pytest.param({"catchup": "latest"}, ["10:05:00"], id="latest"),
        pytest.param(
            {"catchup": "all"}, ["10:02:00", "10:03:00", "10:04:00", "10:05:00"], id="all"
        ),
        pytest.param(
            {"catchup": "all", "catchup_window": 200},  # oldest allowed: after 10:02:10
            ["10:03:00", "10:04:00", "10:05:00"],
            id="all-within-window",
        ),
        pytest.param(
            {"catchup": "all", "catchup_window": 210},  # exactly 10:02:00: not after it
            ["10:03:00", "10:04:00", "10:05:00"],
            id="all-window-edge-excludes-the-slot-on-it",
        ),
        pytest.param(
            {"catchup": "latest", "catchup_window": 40},  # oldest allowed: after 10:04:50
            ["10:05:00"],
            id="latest-within-window",
        ),
        pytest.param(
            {"catchup": "latest", "catchup_window": 20},  # oldest allowed: after 10:05:10
            [],
            id="latest-older-than-window",
        ),
    ],
)
def test_missed_slots_follow_the_catchup_policy(
    policies: dict[str, Any], expected: list[str]
) -> None:
    assert due(entry(**policies)) == expected


@pytest.mark.parametrize("policy", ["skip", "latest", "all"])
def test_without_a_miss_only_slots_in_after_now_are_due(policy: str) -> None:
    every_second = entry(every(1).seconds, catchup=policy)
    assert due(every_second, after="10:00:00", now="10:00:03") == [
        "10:00:01",
        "10:00:02",
        "10:00:03",
    ]
    assert due(every_second, after="10:00:03", now="10:00:03.900") == []


@pytest.mark.parametrize("policy", ["skip", "latest"])
def test_a_recent_slot_fires_and_no_older_one_is_added(policy: str) -> None:
    # 10:06:00 is 3 s old: inside the grace. The misses before it are not caught up.
    assert due(entry(catchup=policy), now="10:06:03") == ["10:06:00"]


def test_all_catches_up_the_misses_and_the_recent_slot() -> None:
    assert due(entry(catchup="all"), now="10:06:03") == [
        "10:02:00",
        "10:03:00",
        "10:04:00",
        "10:05:00",
        "10:06:00",
    ]


def test_the_slot_after_is_never_due_again() -> None:
    assert due(entry(catchup="all"), after="10:02:00", now="10:04:30") == ["10:03:00", "10:04:00"]


def test_without_grace_latest_fires_the_slot_at_or_before_now() -> None:
    assert due(entry(), now="10:05:00", grace=timedelta(0)) == ["10:05:00"]
    assert due(entry(), now="10:05:30", grace=timedelta(0)) == ["10:05:00"]


def test_the_starting_deadline_window_bounds_catchup_like_catchup_window() -> None:
    assert due(entry(catchup="all"), window=timedelta(seconds=200)) == [
        "10:03:00",
        "10:04:00",
        "10:05:00",
    ]
    assert due(entry(), window=timedelta(seconds=20)) == []


def test_the_narrower_of_catchup_window_and_starting_deadline_wins() -> None:
    wide_entry = entry(catchup="all", catchup_window=1000)
    assert due(wide_entry, window=timedelta(seconds=100)) == ["10:04:00", "10:05:00"]
    narrow_entry = entry(catchup="all", catchup_window=100)
    assert due(narrow_entry, window=timedelta(seconds=1000)) == ["10:04:00", "10:05:00"]


def test_catchup_never_reaches_before_start_at_or_after_end_at() -> None:
    bounded = entry(catchup="all", start_at=utc("10:02:30"), end_at=utc("10:04:00"))
    assert due(bounded) == ["10:03:00", "10:04:00"]
    latest = entry(catchup="latest", end_at=utc("10:03:30"))
    assert due(latest) == ["10:03:00"]
    not_started = entry(catchup="latest", start_at=utc("10:05:15"))
    assert due(not_started) == []


def test_all_is_bounded_to_the_oldest_max_catch_up_slots() -> None:
    every_second = entry(every(1).seconds, catchup="all")
    slots = slots_due(
        every_second,
        utc("08:00:00"),
        utc("10:00:00"),
        grace=GRACE,
    )
    # 1000 oldest misses (08:00:01 ... 08:16:40), then the 5 recent slots.
    assert len(slots) == MAX_CATCH_UP_SLOTS + 5
    assert slots[0] == utc("08:00:01")
    assert slots[MAX_CATCH_UP_SLOTS - 1] == utc("08:16:40")
    assert slots[-5:] == [utc(f"09:59:{s}") for s in (56, 57, 58, 59)] + [utc("10:00:00")]


def test_cron_slots_in_a_timezone_are_caught_up_at_their_utc_instants() -> None:
    berlin = entry("*/2 * * * *", timezone="Europe/Berlin", catchup="all")
    assert due(berlin) == ["10:02:00", "10:04:00"]
