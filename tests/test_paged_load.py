"""A replica that starts reads the runtime entries in pages over its first ticks (issue 20):
slots due meanwhile fire once, changes made meanwhile are applied, a Redis error mid-read
costs nothing. And equal stored schedules are resolved once without mixing their types.

Real Redis; a fake clock. ``SETUP_LOAD_SECONDS`` and ``TICK_LOAD_SECONDS`` are 0, so each
start-up and each tick reads exactly one page (HSCAN's ~1 000 names).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from replica_helpers import fired, make_app, schedulers, tick_for
from startup_helpers import one_page_per_read, runtime_names

from celery_fork_scheduler import ConfigError, Manager, startup_catchup
from celery_fork_scheduler import scheduler as scheduler_module
from celery_fork_scheduler.entry import entries_from_config, entry_from_config
from celery_fork_scheduler.store import RuntimeStore
from celery_fork_scheduler.testing import FakeClock

#: Every entry falls due at 10:01:00, 0.2 s after the replicas start: inside the read.
BEFORE_SLOT = "2026-03-02T10:00:59.800+00:00"
SLOT = "2026-03-02T10:01:00+00:00"
COUNT = 3_000
UTC = ZoneInfo("UTC")


@pytest.fixture(autouse=True)
def one_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    one_page_per_read(monkeypatch)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(BEFORE_SLOT)


@pytest.fixture
def manager(redis_url: str, clock: FakeClock) -> Manager:
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(
        {"name": f"rt{i:04}", "task": "reports.minute", "schedule": "* * * * *"}
        for i in range(COUNT)
    )
    return manager


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url) as make:
        yield make


def test_a_starting_replica_reads_the_entries_over_its_first_ticks_and_misses_no_slot(
    make: Any, manager: Manager, clock: FakeClock
) -> None:
    replicas = [make(clock, rid, fork_scheduler_owner_grace=1) for rid in ("a", "b")]
    assert all(r.runtime is not None and r.runtime.loading for r in replicas)
    assert all(0 < len(runtime_names(r)) < COUNT for r in replicas)  # one page so far
    tick_for(lambda: [r.tick() for r in replicas], clock, 4, step=0.1)
    assert all(len(runtime_names(r)) == COUNT and not r.runtime.loading for r in replicas)  # type: ignore[union-attr]
    published = fired(*[r.publisher for r in replicas])  # type: ignore[arg-type]
    assert published == {(f"rt{i:04}", SLOT): 1 for i in range(COUNT)}


def test_an_owner_killed_before_its_last_page_costs_a_grace_not_a_slot(
    make: Any, manager: Manager, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica still reading promises nothing about the slots it owns: the others do not
    take its progress for handled slots of entries it has not read."""
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 1.0)  # the fake clock stands
    survivor = make(clock, "b", fork_scheduler_owner_grace=1)
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 0.0)
    tick_for(survivor.tick, clock, 0.2, step=0.1)
    killed = make(clock, "a", fork_scheduler_owner_grace=1)
    tick_for(lambda: [r.tick() for r in (survivor, killed)], clock, 0.1, step=0.1)
    assert killed.runtime.loading  # the slot passed; the replica is killed mid-read
    tick_for(survivor.tick, clock, 30, step=0.1)
    published = fired(survivor.publisher, killed.publisher)
    assert published == {(f"rt{i:04}", SLOT): 1 for i in range(COUNT)}


def test_changes_made_while_the_pages_are_read_are_applied_after_the_last_one(
    make: Any, manager: Manager, clock: FakeClock
) -> None:
    replica = make(clock, "a", fork_scheduler_refresh_interval=0.5)
    assert replica.runtime.loading
    read_first = sorted(runtime_names(replica))[0]
    unread = sorted(set(f"rt{i:04}" for i in range(COUNT)) - runtime_names(replica))[0]
    manager.remove(read_first)
    manager.remove(unread)
    manager.add("added", "reports.added", "* * * * *")
    tick_for(replica.tick, clock, 4, step=0.1)
    published = fired(replica.publisher)
    assert (read_first, SLOT) not in published and (unread, SLOT) not in published
    assert published[("added", SLOT)] == 1
    assert len(published) == COUNT - 2 + 1 and max(published.values()) == 1


def test_a_redis_error_between_two_pages_stops_the_read_and_the_next_poll_reads_everything(
    make: Any, manager: Manager, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pages = RuntimeStore.pages

    def failing_after_one_page(self: RuntimeStore, *args: Any, **kwargs: Any) -> Any:
        version, pages = real_pages(self, *args, **kwargs)

        def pages_then_error() -> Iterator[Any]:
            yield next(pages)
            raise redis.ConnectionError("connection lost mid-read")

        return version, pages_then_error()

    monkeypatch.setattr(RuntimeStore, "pages", failing_after_one_page)
    replica = make(clock, "a", fork_scheduler_refresh_interval=0.5)
    monkeypatch.setattr(RuntimeStore, "pages", real_pages)
    tick_for(replica.tick, clock, 4, step=0.1)
    assert len(runtime_names(replica)) == COUNT
    assert fired(replica.publisher) == {(f"rt{i:04}", SLOT): 1 for i in range(COUNT)}


def test_a_replica_reads_a_store_of_ordinary_size_whole_before_its_first_tick(
    make: Any, redis_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 1.0)  # the fake clock stands
    Manager(make_app(redis_url), clock=clock).add_many(
        {"name": f"rt{i:04}", "task": "reports.minute", "schedule": "* * * * *"}
        for i in range(COUNT)
    )
    replica = make(clock, "a")
    assert not replica.runtime.loading and len(runtime_names(replica)) == COUNT


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"type": "daily", "every": 1, "times": ["10:00"]}, {"every": True}),
        ({"type": "daily", "every": 1, "times": ["10:00"]}, {"every": 1.0}),
        ({"type": "interval", "every": 60}, {"every": "60"}),
        ({"type": "cron", "expr": "0 10 * * *"}, {"day_or": 1}),
    ],
)
def test_equal_looking_stored_schedules_are_not_mixed_up_by_the_resolution_cache(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    """``1``, ``1.0``, ``True`` and ``"1"`` compare or hash alike in places; the cache of
    resolved schedule dicts keeps them apart, so a valid dict read first does not make an
    invalid one pass."""
    entry_from_config("valid", {"task": "t", "schedule": first}, default_timezone=UTC)
    with pytest.raises(ConfigError, match=r"'bad'.*schedule"):
        entry_from_config(
            "bad", {"task": "t", "schedule": {**first, **second}}, default_timezone=UTC
        )


def test_an_entry_last_in_the_start_up_catch_up_fires_on_time(
    make: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marks are read a batch a tick; an entry whose slot comes before its batch has its
    mark read out of turn (its missed slots first), instead of waiting for its batch."""
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 1.0)  # the fake clock stands
    monkeypatch.setattr(startup_catchup, "MARKS_BATCH", 1_000)
    daily = {f"d{i:05}": {"task": "t", "schedule": "0 3 * * *"} for i in range(12_000)}
    replica = make(clock, "a", beat_schedule={**daily, "zz-probe": {"task": "t", "schedule": 1}})
    assert replica.catch_up.pending("zz-probe")
    tick_for(replica.tick, clock, 0.4, step=0.1)  # 10:01:00 falls due at the third tick
    assert replica.catch_up.unchecked  # the batches are still being read
    assert fired(replica.publisher)[("zz-probe", SLOT)] == 1


def test_crontabs_resolved_once_per_value_are_never_mixed_up() -> None:
    """Plain crontabs are resolved once per value (as written, or as expanded): equal ones
    give equal schedules, other fields keep theirs; a crontab made with another app is read in
    the entry's zone all the same (as Celery's beat binds it to its own app: round 61), and an
    entry's ``timezone`` key still gives it its own."""
    from celery import Celery
    from celery.schedules import crontab

    berlin = Celery("berlin", set_as_current=False)
    berlin.conf.timezone = "Europe/Berlin"

    tokyo = Celery("tokyo", set_as_current=False)
    tokyo.conf.timezone = "Asia/Tokyo"

    schedules = {
        "a": crontab(minute=5, hour=3),
        "b": crontab(minute=5, hour=3),
        "c": crontab(minute=[5], hour={3}),
        "e": crontab(minute=6, hour=3),
        "f": crontab(minute=5, hour=3, app=berlin),
        "g": crontab(minute=5, hour=3, app=tokyo),
        "h": crontab(minute=5, hour=3),
    }
    definitions: dict[str, dict[str, Any]] = {
        name: {"task": "t", "schedule": value} for name, value in schedules.items()
    }
    tokyo_key = {"task": "t", "schedule": crontab(minute=5, hour=3), "timezone": "Asia/Tokyo"}
    definitions["k"] = tokyo_key
    entries = entries_from_config(definitions, default_timezone=UTC)
    described = {name: entry.schedule.describe() for name, entry in entries.items()}
    assert described["a"] == described["b"] == described["c"] == described["h"]
    assert described["f"] == described["g"] == described["a"]
    assert described["e"] != described["a"]
    assert "UTC" in described["a"] and "Asia/Tokyo" in described["k"]


def test_entries_keep_no_per_entry_copy_of_what_they_share() -> None:
    """A million entries: an empty tag set (216 bytes), a decoded ``"latest"`` or ``"allow"``
    (about 55 bytes each) and a decoder's roomy args list are not kept per entry."""
    import json

    from celery_fork_scheduler.entry import CATCHUPS, NO_TAGS, OVERLAPS, entry_from_dict

    static = entry_from_config(
        "s", {"task": "t", "schedule": 60, "catchup": "all"}, default_timezone=UTC
    )
    assert static.tags is NO_TAGS and static.catchup is CATCHUPS[2]
    stored = json.loads(
        '{"schema": 1, "task": "t", "schedule": 60, "args": [1], "tags": [],'
        ' "catchup": "latest", "overlap": "skip"}'
    )
    runtime = entry_from_dict("r", stored, default_timezone=UTC)
    assert runtime.tags is NO_TAGS
    assert runtime.catchup is CATCHUPS[1] and runtime.overlap is OVERLAPS[OVERLAPS.index("skip")]
    assert runtime.args == [1] and runtime.args is not stored["args"]
    assert sys.getsizeof(runtime.args) < sys.getsizeof(stored["args"])
