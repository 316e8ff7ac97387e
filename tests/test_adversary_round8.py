"""Adversary round 8: regressions of the shared schedule / next-slot caches.

Each test states the expected behaviour; each failed on 6e12a61 (the fold ones since
da677e8) and passes since the fix after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from dateutil import tz as dateutil_tz

from celery_fork_scheduler import Manager
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.testing import FakeClock

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")


def _named_offset(name: str) -> timezone:
    """A fixed-offset tzinfo whose name is an IANA zone (to_zone reads the zone by its name)."""
    return timezone(timedelta(hours=1), name)


def test_an_entry_timezone_equal_in_offset_to_another_keeps_its_own_zone() -> None:
    """Two entries whose ``timezone`` tzinfo objects compare equal (same fixed offset) but
    name different IANA zones each get their own zone, as before the schedule cache
    (``_resolved_schedule`` is keyed by ``zone`` equality: ``timezone.__eq__`` compares only the
    offset, so the second entry gets the first one's zone)."""
    paris = entry_from_config(
        "r8-paris",
        {"task": "t", "schedule": "17 9 * * *", "timezone": _named_offset("Europe/Paris")},
        default_timezone=UTC,
    )
    lagos = entry_from_config(
        "r8-lagos",
        {"task": "t", "schedule": "17 9 * * *", "timezone": _named_offset("Africa/Lagos")},
        default_timezone=UTC,
    )
    assert paris.schedule.zone.key == "Europe/Paris"
    assert lagos.schedule.zone.key == "Africa/Lagos"


def test_an_app_default_zone_equal_in_offset_to_another_is_not_taken_for_it() -> None:
    """The same with the app's default zone: an entry validated under one named fixed offset
    does not make later entries under another (equal) one take its zone."""
    first = entry_from_config(
        "r8-default-a",
        {"task": "t", "schedule": "19 9 * * *"},
        default_timezone=_named_offset("Europe/Madrid"),
    )
    second = entry_from_config(
        "r8-default-b",
        {"task": "t", "schedule": "19 9 * * *"},
        default_timezone=_named_offset("Africa/Algiers"),
    )
    assert first.schedule.zone.key == "Europe/Madrid"
    assert second.schedule.zone.key == "Africa/Algiers"


@pytest.mark.parametrize(
    ("zone", "key"),
    [
        (dateutil_tz.gettz("Europe/Paris"), "Europe/Paris"),
        (dateutil_tz.tzoffset("Europe/Paris", 3600), "Etc/GMT-1"),  # a fixed offset, named
        (dateutil_tz.tzutc(), "UTC"),
    ],
    ids=["tzfile", "tzoffset", "tzutc"],
)
def test_a_dateutil_tzinfo_as_entry_timezone_is_read_as_its_iana_zone(zone: Any, key: str) -> None:
    """A dateutil tzinfo (unhashable) as an entry's ``timezone``: once a ``TypeError`` out of
    the ``_resolved_schedule`` lru_cache, then a ConfigError; since round 62 the IANA zone it
    stands for (the file a ``gettz`` zone was read from, a fixed offset's ``Etc/GMT``), as
    Celery uses any tzinfo."""
    entry = entry_from_config(
        "r8-dateutil",
        {"task": "t", "schedule": "0 9 * * *", "timezone": zone},
        default_timezone=UTC,
    )
    assert entry.schedule.zone.key == key


def test_a_dateutil_app_timezone_is_read_as_its_iana_zone() -> None:
    """The same for the default zone (Celery's ``app.timezone`` returns a tzinfo given as
    ``timezone`` unchanged, so a dateutil zone reaches ``default_timezone``)."""
    entry = entry_from_config(
        "r8-dateutil-default",
        {"task": "t", "schedule": "*/5 * * * *"},
        default_timezone=dateutil_tz.tzoffset("Europe/Paris", 3600),
    )
    assert entry.schedule.zone.key == "Etc/GMT-1"


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("adversary_round8", set_as_current=False, broker=redis_url)
    app.conf.update(timezone="UTC", beat_schedule={}, result_expires=None)
    yield app
    app.close()


@pytest.fixture
def manager(app: Celery) -> Manager:
    return Manager(app, clock=FakeClock("2026-03-02T10:00:00+00:00"))


def test_manager_add_and_add_many_store_a_dateutil_timezone_by_its_name(
    manager: Manager,
) -> None:
    """Manager.add and Manager.add_many store the IANA name of a dateutil zone (once refused
    with a ConfigError, never an uncaught TypeError)."""
    zone = dateutil_tz.gettz("America/New_York")
    manager.add("r8-single", "tasks.report", 300, timezone=zone)
    manager.add_many(
        [{"name": "r8-bulk", "task": "tasks.report", "schedule": 300, "timezone": zone}]
    )
    assert manager.store().get("r8-single").data["timezone"] == "America/New_York"
    assert manager.store().get("r8-bulk").data["timezone"] == "America/New_York"


def test_first_slot_after_the_second_of_two_equal_wall_times_is_after_it() -> None:
    """``Entry.first_slot_after`` of the repeated wall time (fold=1) is the first slot after
    *that* instant. ``next_slot_of`` is an lru_cache keyed by ``after``, and two aware
    datetimes of one zone that differ only in ``fold`` compare (and hash) equal, so the slot
    cached for the fold=0 instant (an hour earlier) is returned: a slot before ``after``."""
    entry = entry_from_config("r8-fold", {"task": "t", "schedule": 2700}, default_timezone=UTC)
    first = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=0)  # 00:30 UTC
    second = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=1)  # 01:30 UTC
    assert first.astimezone(UTC) != second.astimezone(UTC)
    assert entry.first_slot_after(first) == entry.schedule.next_slot(first)
    slot = entry.first_slot_after(second)
    assert slot is not None and slot > second
    assert slot == entry.schedule.next_slot(second)


def test_manager_next_runs_after_the_repeated_wall_time_are_after_it(manager: Manager) -> None:
    """Manager.next_runs(after=...) for the second 02:30 of a DST end gives slots after it,
    also when the first 02:30 was asked about just before (the next-slot cache)."""
    manager.add("r8-next-runs", "tasks.report", 2400)
    first = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=0)
    second = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=1)
    manager.next_runs("r8-next-runs", 3, after=first)
    runs = manager.next_runs("r8-next-runs", 3, after=second)
    assert runs and runs[0] > second
