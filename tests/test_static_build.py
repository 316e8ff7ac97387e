"""A replica starting with many static entries builds them page by page over its first ticks
(issue 20): it publishes before the last one is built, a slot due meanwhile fires once when
its entry is built, it promises no progress until every entry is built, replicas with equal
configurations agree on their fingerprint, and a bad entry on a later page stops beat.

Real Redis; a fake clock (the monotonic clock stands with it). ``SETUP_LOAD_SECONDS`` and
``TICK_BUILD_SECONDS`` are 0 and a page is 500 entries, so each start-up and each tick builds
exactly one page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from replica_helpers import fired, make_app, schedulers, tick_for
from startup_helpers import one_static_page_per_tick

from celery_fork_scheduler import ConfigError, Scheduler
from celery_fork_scheduler.entry import entries_from_config
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.static_build import StaticBuild, static_digest
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

#: Every minutely entry falls due at 10:01:00, 0.2 s after the replicas start.
BEFORE_SLOT = "2026-03-02T10:00:59.800+00:00"
SLOT = "2026-03-02T10:01:00+00:00"
COUNT = 3_000
PAGE = 500
UTC = ZoneInfo("UTC")


@pytest.fixture(autouse=True)
def one_page_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    one_static_page_per_tick(monkeypatch, PAGE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(BEFORE_SLOT)


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url) as make:
        yield make


def minutely(count: int = COUNT, **extra: dict[str, Any]) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        f"s{i:04}": {"task": "reports.minute", "schedule": "* * * * *"} for i in range(count)
    }
    schedule.update(extra)
    return schedule


def built(scheduler: Scheduler) -> int:
    return sum(entry.source == "config" for entry in scheduler.entries.values())


def test_a_replica_publishes_while_it_builds_and_every_slot_due_meanwhile_fires_once(
    make: Any, clock: FakeClock
) -> None:
    schedule = minutely(a_probe={"task": "probe", "schedule": 1})  # type: ignore[arg-type]
    replicas = [make(clock, rid, beat_schedule=schedule) for rid in ("a", "b")]
    assert all(built(r) == PAGE for r in replicas)
    clock.advance(0.2)  # 10:01:00: the probe (first in name order) is built, most are not
    for replica in replicas:
        replica.tick()
    assert all(built(r) < COUNT for r in replicas)
    assert fired(*[r.publisher for r in replicas])[("a_probe", SLOT)] == 1
    tick_for(lambda: [r.tick() for r in replicas], clock, 2, step=0.1)
    assert all(built(r) == COUNT + 1 and not r._reading_entries for r in replicas)
    published = fired(*[r.publisher for r in replicas])
    minute = {key: count for key, count in published.items() if key[0] != "a_probe"}
    assert minute == {(f"s{i:04}", SLOT): 1 for i in range(COUNT)}  # also those built late


def test_a_replica_still_building_promises_no_progress(
    make: Any, clock: FakeClock, redis_url: str
) -> None:
    progress = Keys("scheduler:").progress
    client = redis.Redis.from_url(redis_url)
    replica = make(clock, "a", beat_schedule=minutely(), fork_scheduler_owner_grace=1)
    assert replica.ownership is not None
    for _ in range(COUNT // PAGE - 2):  # the last page is built by the tick after
        replica.tick()
        clock.advance(0.1)
        assert client.hget(progress, "a") is None
        assert replica._reading_entries
    replica.tick()
    clock.advance(0.5)
    tick_for(replica.tick, clock, 1.0, step=0.1)
    assert not replica._reading_entries
    assert client.hget(progress, "a") is not None


def test_replicas_with_equal_configurations_agree_on_the_fingerprint_built_page_by_page(
    make: Any, clock: FakeClock
) -> None:
    schedule = minutely(1_234)
    changed = {**schedule, "s0999": {"task": "reports.minute", "schedule": "*/2 * * * *"}}
    a, b, c = (
        make(clock, rid, beat_schedule=s)
        for rid, s in (("a", schedule), ("b", schedule), ("c", changed))
    )
    tick_for(lambda: [r.tick() for r in (a, b, c)], clock, 0.5, step=0.1)
    assert all(r.static.complete for r in (a, b, c))
    entries = entries_from_config(schedule, default_timezone=UTC)
    whole = static_digest(entries[name] for name in sorted(entries))
    assert a.static.digest == b.static.digest == whole != 0
    assert a._static_digest == b._static_digest
    assert c._static_digest != a._static_digest


def test_a_bad_entry_on_a_later_page_names_itself_after_the_first_ones_published(
    make: Any, clock: FakeClock
) -> None:
    schedule = minutely(z_bad={"task": "reports.minute", "schedule": "0 0 30 2 *"})  # type: ignore[arg-type]
    replica = make(clock, "a", beat_schedule=schedule)
    with pytest.raises(ConfigError) as raised:
        tick_for(replica.tick, clock, 2, step=0.1)
    assert "z_bad" in str(raised.value) and "schedule" in str(raised.value)
    assert fired(replica.publisher)[("s0000", SLOT)] == 1


def test_beat_stopped_by_a_bad_entry_after_its_first_tick_exits_with_status_1(
    redis_url: str, clock: FakeClock
) -> None:
    """Celery's beat loop ends quietly on SystemExit; the scheduler raises it again from the
    sync that follows, once, so ``celery beat`` exits with status 1."""
    schedule = minutely(z_bad={"task": "reports.minute", "schedule": "0 0 30 2 *"})  # type: ignore[arg-type]
    app = make_app(redis_url, schedule)
    scheduler = Scheduler(
        app,
        clock=clock,
        publisher=RecordingPublisher(),
        monotonic=lambda: clock.now.timestamp(),
    )
    try:
        with pytest.raises(SystemExit) as stopped:
            for _ in range(COUNT // PAGE + 1):
                scheduler.tick()
                clock.advance(0.1)
        assert stopped.value.code == 1
        with pytest.raises(SystemExit) as again:
            scheduler.sync()
        assert again.value.code == 1
        scheduler.sync()  # once only
    finally:
        scheduler.close()


def test_a_bad_entry_name_or_a_bad_beat_schedule_is_refused_before_any_entry_is_built() -> None:
    with pytest.raises(ConfigError, match="entry names must be non-empty strings"):
        StaticBuild({"ok": {}, 3: {}}, {}, default_timezone=UTC)
    with pytest.raises(ConfigError, match="beat_schedule"):
        StaticBuild([("ok", {})], {}, default_timezone=UTC)  # type: ignore[arg-type]


def test_built_entries_of_other_sources_come_in_name_order_and_the_config_wins() -> None:
    config = {"b": {"task": "config.b", "schedule": 60}, "d": {"task": "config.d", "schedule": 60}}
    others = entries_from_config(
        {"a": {"task": "other.a", "schedule": 60}, "b": {"task": "other.b", "schedule": 60}},
        default_timezone=UTC,
    )
    build = StaticBuild(config, others, default_timezone=UTC)
    assert build.names == {"a", "b", "d"} and build.remaining == 3
    entries = build.page()
    assert [(e.name, e.task) for e in entries] == [
        ("a", "other.a"),
        ("b", "config.b"),
        ("d", "config.d"),
    ]
    assert build.complete and build.remaining == 0 and build.page() == []


def test_a_slot_of_an_entry_built_late_fires_at_once_whatever_its_catch_up_policy(
    make: Any, clock: FakeClock
) -> None:
    """Beat building its entries is not beat down: a slot due before the entry was built is
    due, also under ``catchup="skip"`` and older than the catch-up grace (5 s) by then. The
    replica ticks every second (no pause), building one page per tick: the last page comes
    at 10:01:05.8."""
    schedule = minutely(
        z_skip={"task": "reports.minute", "schedule": "* * * * *", "catchup": "skip"}  # type: ignore[arg-type]
    )
    replica = make(clock, "a", beat_schedule=schedule)
    for _ in range(COUNT // PAGE):
        clock.advance(1.0)
        assert not replica.static.complete
        replica.tick()
    assert replica.static.complete
    assert fired(replica.publisher)[("z_skip", SLOT)] == 1
