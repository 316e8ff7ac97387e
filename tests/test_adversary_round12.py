"""Adversary round 12: the paged start-up read of runtime entries (commit db57c08).

Real Redis; a fake clock. ``SETUP_LOAD_SECONDS`` / ``TICK_LOAD_SECONDS`` are 0, so each
start-up and each tick reads exactly one page (HSCAN's ~1 000 names), as in
tests/test_paged_load.py.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from celery.schedules import crontab
from replica_helpers import fired, make_app, schedulers, tick_for
from startup_helpers import fail_after_first_page, one_page_per_read, runtime_names

from celery_fork_scheduler import Manager
from celery_fork_scheduler import scheduler as scheduler_module
from celery_fork_scheduler.entry import entries_from_config
from celery_fork_scheduler.store import RuntimeStore
from celery_fork_scheduler.testing import FakeClock

BEFORE_SLOT = "2026-03-02T10:00:59.800+00:00"
SLOT = "2026-03-02T10:01:00+00:00"
NEXT_SLOT = "2026-03-02T10:02:00+00:00"
COUNT = 3_000
UTC = ZoneInfo("UTC")


@pytest.fixture(autouse=True)
def one_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    one_page_per_read(monkeypatch)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(BEFORE_SLOT)


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url) as make:
        yield make


def add_yearly(manager: Manager, count: int = COUNT, **extra: Any) -> list[str]:
    names = [f"rt{i:04}" for i in range(count)]
    manager.add_many(
        {"name": name, "task": "reports.yearly", "schedule": "0 0 1 1 *", **extra} for name in names
    )
    return names


def test_an_entry_updated_while_unread_fires_no_slot_of_its_new_schedule_before_the_update(
    make: Any, redis_url: str, clock: FakeClock
) -> None:
    """Promise (guarantees.md, runtime change row): every replica schedules a changed entry
    from its first slot after the change's instant; what `update` answers as next_run fires.

    Sequence: 3 000 yearly runtime entries; a replica starts at 10:00:59.8 and reads one page.
    At 10:01:30, before its page is read, one unread entry is updated to `* * * * *`
    (Manager answers next_run 10:02:00). The replica reads that page at its next tick and
    queues the entry "from the instant beat started" (10:00:59.8), ignoring the update's
    instant: it publishes slot 10:01:00 of the new schedule, 30 s before the entry had it.
    """
    manager = Manager(make_app(redis_url), clock=clock)
    add_yearly(manager)
    replica = make(clock, "a")
    assert replica.runtime.loading
    unread = sorted({f"rt{i:04}" for i in range(COUNT)} - runtime_names(replica))[0]
    clock.advance(30.2)  # 10:01:30
    job = manager.update(unread, schedule="* * * * *")
    assert job.next_run == datetime.fromisoformat(NEXT_SLOT)
    tick_for(replica.tick, clock, 45, step=0.5)  # up to 10:02:15
    published = fired(replica.publisher)
    assert (unread, SLOT) not in published, published
    assert published[(unread, NEXT_SLOT)] == 1


def test_entries_added_while_a_replica_reads_fire_no_slot_before_they_were_added(
    make: Any, redis_url: str, clock: FakeClock
) -> None:
    """Promise (guarantees.md, runtime change row): an added entry is scheduled from its first
    slot after the instant it was added; `add` answers next_run and that is what fires.

    Sequence: 3 000 yearly entries; a replica starts at 10:00:59.8 and reads one page. At
    10:01:30, 50 `* * * * *` entries are added (next_run 10:02:00). HSCAN returns those that
    land in buckets not scanned yet; the replica queues them from the instant it started and
    publishes their slot 10:01:00, which is 30 s before they existed.
    """
    manager = Manager(make_app(redis_url), clock=clock)
    add_yearly(manager)
    replica = make(clock, "a")
    assert replica.runtime.loading
    clock.advance(30.2)  # 10:01:30
    added = [f"late{i:02}" for i in range(50)]
    manager.add_many({"name": n, "task": "reports.minute", "schedule": "* * * * *"} for n in added)
    tick_for(replica.tick, clock, 45, step=0.5)  # up to 10:02:15
    published = fired(replica.publisher)
    early = sorted(n for n in added if (n, SLOT) in published)
    assert early == [], f"{len(early)} entries added at 10:01:30 published slot 10:01:00"
    assert all(published[(n, NEXT_SLOT)] == 1 for n in added)


def test_an_entry_disabled_while_the_pages_are_read_stops_within_a_refresh(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, runtime change row): a change reaches every replica at its next
    refresh (fork_scheduler_refresh_interval, 1 s); a slot due after a change that disables the
    entry does not fire.

    Sequence: 6 000 `* * * * *` entries; a replica starts at 10:00:55 and reads one page per
    tick (one tick every 0.5 s, as on a host whose ticks are busy). At 10:00:55.5 an entry it
    has already read is disabled (`enabled=False`). The replica polls no change until its last
    page; the claim script knows nothing of `enabled`, so the slot 10:01:00, due 4.5 s (four
    refresh intervals) after the disable, is published.
    """
    clock = FakeClock("2026-03-02T10:00:55+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(
        {"name": f"rt{i:04}", "task": "reports.minute", "schedule": "* * * * *"}
        for i in range(6000)
    )
    replica = make(clock, "a", fork_scheduler_refresh_interval=0.5)
    assert replica.runtime.loading
    read = sorted(runtime_names(replica))[0]
    clock.advance(0.5)
    manager.update(read, enabled=False)
    pages = 1
    while replica.runtime.loading and clock() < datetime.fromisoformat(SLOT):
        clock.advance(1.0)
        replica.tick()
        pages += 1
    assert replica.runtime.loading, "the read must still be under way at the slot"
    tick_for(replica.tick, clock, 5, step=0.5)
    published = fired(replica.publisher)
    assert (read, SLOT) not in published, f"disabled at 10:00:55.5, published at {SLOT}"


def test_probe_an_entry_updated_before_start_and_read_after_a_mid_read_error_fires_no_earlier_slot(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe. Promise (guarantees.md, runtime change row): a changed entry is scheduled
    from its first slot after the change's instant, on every replica alike. (And the commit: "a
    Redis error mid-read costs nothing".)

    Sequence: at 09:00, 3 000 yearly entries with catchup="all" are added; at 10:00:30 every
    one is updated to `* * * * *` (update_many: next_run 10:01:00). A replica starts at
    10:01:02, reads one page; reading the second page raises ConnectionError. The next poll
    reads everything: the entries not read are scheduled from the instant they were *added*
    (09:00)? Checked: no; every entry publishes 10:01:00 only, none of 09:01..10:00.
    """
    clock = FakeClock("2026-03-02T09:00:00+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    names = add_yearly(manager, catchup="all")
    clock.set("2026-03-02T10:00:30+00:00")
    manager.update_many({"name": n, "schedule": "* * * * *"} for n in names)
    clock.set("2026-03-02T10:01:02+00:00")
    real_pages = RuntimeStore.pages

    def failing_after_one_page(self: RuntimeStore, *args: Any, **kwargs: Any) -> Any:
        version, pages = real_pages(self, *args, **kwargs)

        def pages_then_error() -> Iterator[Any]:
            yield next(pages)
            raise redis.ConnectionError("connection lost mid-read")

        return version, pages_then_error()

    monkeypatch.setattr(RuntimeStore, "pages", failing_after_one_page)
    replica = make(clock, "a", fork_scheduler_refresh_interval=0.5)
    first_page = runtime_names(replica)
    monkeypatch.setattr(RuntimeStore, "pages", real_pages)
    tick_for(replica.tick, clock, 5, step=0.25)
    published = fired(replica.publisher)
    before_change = {
        key
        for key in published
        if datetime.fromisoformat(key[1])
        < clock().replace(hour=10, minute=0, second=30, microsecond=0)
    }
    late_read = sorted(set(names) - first_page)
    assert late_read
    assert not before_change, (
        f"{len(before_change)} slots before the 10:00:30 update published, e.g. "
        f"{sorted(before_change)[:3]}"
    )
    assert all(published[(n, SLOT)] == 1 for n in names)


def test_a_catchup_skip_entry_read_late_still_fires_the_slot_due_during_the_read(
    make: Any, redis_url: str, clock: FakeClock
) -> None:
    """Promise (commit db57c08, test_paged_load docstring; guarantees.md promise 1): entries read
    late are queued from the instant beat started, "so slots due during the read are still
    fired"; while Redis is reachable and a replica is healthy, every slot is published.

    Sequence: 3 000 `* * * * *` entries with catchup="skip" (the replica was up: nothing was
    missed while replicas were down). One replica starts at 10:00:59.8; each tick reads one page
    and takes 3 s (a host busy publishing a burst). The entries of the third page are read at
    10:01:05.8, their slot 10:01:00 is then 5.8 s old (> fork_scheduler_catchup_grace) and
    "skip" drops it: no replica ever publishes it.
    """
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(
        {"name": f"rt{i:04}", "task": "reports.minute", "schedule": "* * * * *", "catchup": "skip"}
        for i in range(COUNT)
    )
    replica = make(clock, "a")
    while replica.runtime.loading:
        clock.advance(3.0)
        replica.tick()
    tick_for(replica.tick, clock, 3, step=0.5)
    published = fired(replica.publisher)
    missing = sorted(f"rt{i:04}" for i in range(COUNT) if (f"rt{i:04}", SLOT) not in published)
    assert missing == [], f"{len(missing)} entries never published slot {SLOT}"


class _LazySchedule(Mapping):  # type: ignore[type-arg]
    """A ``beat_schedule`` built on demand (say, from a database): each item is made when it is
    read, so each entry's ``crontab`` is dropped once that entry is built. The collector runs
    while the next item is made (here forced, so that the test is deterministic; with no forced
    collection, 1 440 such entries gave 31 wrong schedules in a plain run)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        return (f"e{i:02}" for i in range(self.count))

    def __getitem__(self, key: str) -> dict[str, Any]:
        gc.collect()
        return {"task": "t", "schedule": crontab(minute=str(int(key[1:])))}


def test_a_beat_schedule_mapping_made_on_demand_gives_each_entry_its_own_crontab() -> None:
    """Promise (commit db57c08: "shared Celery schedule objects are resolved once"; a bad or
    wrong entry never passes silently): each entry fires on its own schedule.

    Sequence: entries_from_config (what setup runs on app.conf.beat_schedule, any Mapping) over
    a Mapping whose items are made on read, entry eN with crontab(minute=N). The memo keys
    Celery schedule objects by id() for the whole batch, but the batch does not hold them: a
    crontab freed after its entry is built leaves its id to the next entry's crontab, which
    then gets the earlier entry's resolved schedule (e03 fires at minute 1, not 3).
    """
    entries = entries_from_config(_LazySchedule(60), default_timezone=UTC)
    wrong = {
        name: entry.schedule.describe()
        for name, entry in entries.items()
        if entry.schedule.describe() != f"cron {int(name[1:])} * * * * in UTC"
    }
    assert wrong == {}


def test_probe_pages_read_without_zmscore_keep_versions_and_instants(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe. Promise (commit db57c08): one ZMSCORE per page, ZSCORE per name before
    Redis 6.2, same result. Sequence: 2 500 entries, a few updated (versions differ); ZMSCORE
    answered "unknown command" (as Redis < 6.2 does); every page still carries each entry's
    version and since."""
    manager = Manager(make_app(redis_url), clock=clock)
    add_yearly(manager, 2500)
    clock.advance(5)
    manager.update("rt0007", schedule="* * * * *")
    store = manager.store()
    expected = dict(store.all()[1])
    real = redis.client.Pipeline.zmscore

    def unknown(self: Any, key: Any, members: Any) -> Any:
        return self.execute_command("ZMSCORE_UNKNOWN", key, *members)

    monkeypatch.setattr(redis.client.Pipeline, "zmscore", unknown)
    _, pages = store.pages()
    read = {name: item for page in pages for name, item in page.items()}
    monkeypatch.setattr(redis.client.Pipeline, "zmscore", real)
    assert read == expected
    assert {n: (i.version, i.since) for n, i in read.items()} == {  # type: ignore[union-attr]
        n: (i.version, i.since)
        for n, i in expected.items()  # type: ignore[union-attr]
    }
    assert read["rt0007"].version > read["rt0006"].version  # type: ignore[union-attr]


def test_probe_one_crontab_object_in_entries_of_different_zones_keeps_each_zone() -> None:
    """Probe. Promise (commit db57c08): shared Celery schedule objects are resolved once
    per distinct value, zones apart. Sequence: one crontab object shared by entries with
    timezone Europe/Paris, America/New_York and none (default UTC), plus an equal but distinct
    crontab object; each keeps its own zone."""
    shared = crontab(minute="0", hour="9")
    entries = entries_from_config(
        {
            "paris": {"task": "t", "schedule": shared, "timezone": "Europe/Paris"},
            "ny": {"task": "t", "schedule": shared, "timezone": "America/New_York"},
            "plain": {"task": "t", "schedule": shared},
            "other": {"task": "t", "schedule": crontab(minute="30", hour="9")},
        },
        default_timezone=UTC,
    )
    after = datetime.fromisoformat("2026-03-02T00:00:00+00:00")
    firsts = {n: e.first_slot_after(after).isoformat() for n, e in entries.items()}
    assert firsts == {
        "paris": "2026-03-02T09:00:00+01:00",
        "ny": "2026-03-02T09:00:00-05:00",
        "plain": "2026-03-02T09:00:00+00:00",
        "other": "2026-03-02T09:30:00+00:00",
    } or {n: datetime.fromisoformat(v) for n, v in firsts.items()} == {
        "paris": datetime.fromisoformat("2026-03-02T08:00:00+00:00"),
        "ny": datetime.fromisoformat("2026-03-02T14:00:00+00:00"),
        "plain": datetime.fromisoformat("2026-03-02T09:00:00+00:00"),
        "other": datetime.fromisoformat("2026-03-02T09:30:00+00:00"),
    }


def test_a_mid_read_error_does_not_lift_the_starting_deadline_for_the_entries_not_read(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, "All replicas down for a while"): the first replica to start
    applies each entry's catch-up policy; `beat_cron_starting_deadline` drops missed slots that
    are too old. Commit db57c08: "a Redis error mid-read costs nothing".

    Sequence: 3 000 `* * * * *` entries, catchup="all", added at 09:59:59.5; a replica publishes
    their 10:00:00 slot and stops. All replicas are down until 10:03:30; a replica starts with
    beat_cron_starting_deadline=60 s, reads one page, and the second page raises
    ConnectionError. The entries of the first page catch up 10:03 only (10:01 and 10:02 are
    older than 60 s); the others, read by the next poll as "changed" entries, are queued from
    the instant they were added and catch up 10:01 and 10:02 too.
    """
    clock = FakeClock("2026-03-02T09:59:59.500+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    names = [f"rt{i:04}" for i in range(COUNT)]
    manager.add_many(
        {"name": n, "task": "reports.minute", "schedule": "* * * * *", "catchup": "all"}
        for n in names
    )
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 1.0)  # the fake clock stands
    first = make(clock, "first")
    assert not first.runtime.loading
    tick_for(first.tick, clock, 1.5, step=0.25)
    assert len(fired(first.publisher)) == COUNT  # every entry's 10:00:00
    first.close()
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 0.0)
    clock.set("2026-03-02T10:03:30+00:00")
    real_pages = fail_after_first_page(monkeypatch)
    replica = make(clock, "a", beat_cron_starting_deadline=60, fork_scheduler_refresh_interval=0.5)
    first_page = runtime_names(replica)
    monkeypatch.setattr(RuntimeStore, "pages", real_pages)
    tick_for(replica.tick, clock, 4, step=0.25)
    published = fired(replica.publisher)
    too_old = sorted(
        key
        for key in published
        if key[1] in ("2026-03-02T10:01:00+00:00", "2026-03-02T10:02:00+00:00")
    )
    assert all((n, "2026-03-02T10:03:00+00:00") in published for n in names)
    assert {n for n, _ in too_old} <= set(names) - first_page  # only the entries read late
    assert too_old == [], f"{len(too_old)} slots older than the starting deadline published"


def test_a_corrupted_change_log_score_on_one_page_stops_no_other_entry(
    make: Any, redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Promise (guarantees.md, failure table: "A runtime entry stored in Redis is corrupted ...
    that entry is skipped; every other entry, static or runtime, keeps firing"; promise 5:
    "any Redis failure ... never crashes or hangs beat").

    Sequence: 3 000 `* * * * *` entries; one entry's score in the change log
    (scheduler:runtime:changes) is set to -inf (+inf breaks latest_change first). A replica
    starts: RuntimeStore._page (the ZMSCORE page read) raises OverflowError (int(-inf)) out of
    load_page, which only catches Redis errors; the exception escapes start-up and beat does
    not start. NOT introduced by db57c08: the old load() had the same int(score or 0) and the
    same except clause; the change kept both on the new paged path.
    """
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(
        {"name": f"rt{i:04}", "task": "reports.minute", "schedule": "* * * * *"}
        for i in range(COUNT)
    )
    changes = next(k for k in redis_client.keys("*runtime*") if k.endswith(b"changes"))
    redis_client.zadd(changes, {"rt1234": float("-inf")})
    replica = make(clock, "a")
    tick_for(replica.tick, clock, 2, step=0.1)
    published = fired(replica.publisher)
    assert sum(1 for i in range(COUNT) if (f"rt{i:04}", SLOT) in published) >= COUNT - 1


def test_a_default_policy_entry_read_late_publishes_each_slot_due_during_the_read(
    make: Any, redis_url: str, clock: FakeClock
) -> None:
    """Promise (commit db57c08: "entries read late are queued from the instant beat started so
    slots due during the read are still fired"; guarantees.md promise 1: while Redis is
    reachable and a replica is healthy, every slot is published).

    Sequence: 3 000 entries every 2 s (default catchup "latest"). One replica starts at
    10:00:59.8; each tick reads one page and takes 3 s (a busy tick: publishing the first
    pages' slots). The third page is read at 10:01:05.8: its entries' slots 10:01:00 (and
    10:01:00 +- 2 s older than the 5 s grace) are treated as missed while replicas were down;
    "latest" drops them since a recent slot fires. Nobody ever publishes them.
    """
    manager = Manager(make_app(redis_url), clock=clock)
    names = [f"rt{i:04}" for i in range(COUNT)]
    manager.add_many({"name": n, "task": "reports.often", "schedule": 2} for n in names)
    replica = make(clock, "a")
    first_page = runtime_names(replica)
    while replica.runtime.loading:
        clock.advance(3.0)
        replica.tick()
    tick_for(replica.tick, clock, 3, step=0.5)
    published = fired(replica.publisher)
    slots = sorted({slot for _, slot in published})
    assert any((n, "2026-03-02T10:01:00+00:00") in published for n in first_page)
    missing = sorted(n for n in names if (n, "2026-03-02T10:01:00+00:00") not in published)
    assert missing == [], f"{len(missing)} entries never published 10:01:00 (slots: {slots[:6]})"
