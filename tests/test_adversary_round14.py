"""Adversary round 14: the start-up catch-up after round 13's fixes (commit 1501829: entries
wait for their high-water mark, missed slots counted as of ``at`` with ``since`` as a floor;
crontab memo by value; chunked static digest), on top of the paged read (0adf780, db57c08).

Real Redis; a fake clock. Where a test reads the runtime entries in pages,
``SETUP_LOAD_SECONDS`` / ``TICK_LOAD_SECONDS`` are 0 (one page of ~1 000 names per read), as in
tests/test_paged_load.py and tests/test_adversary_round13.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from replica_helpers import fired, make_app, schedulers, tick_for
from startup_helpers import (
    at,
    dead_replica_claims,
    one_page_per_read,
    padding,
    runtime_names,
    slot_at,
    wait_for_redis_time,
)

from celery_fork_scheduler import Manager
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.testing import FakeClock


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url) as make:
        yield make


# -- failing -----------------------------------------------------------------------------------


def test_an_unsent_claim_of_an_entry_read_late_is_taken_over_as_at_the_start(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, failure table: "no other replica is running": a starting replica
    "takes over those [unsent claims] no older than the claim lease plus the catch-up grace,
    once the lease has run out"; read-late row: "Each entry read later is scheduled as if it
    had been read when beat started").

    Sequence: 4 000 `* * * * *` runtime entries, catchup="skip", claim lease 3 s (lease + grace
    = 8 s). Replica "dead" wins every entry's 10:00:00 and dies unsent. At 10:00:06 (each claim
    6 s old: older than the grace, so not the entries' first queued slot, but inside lease +
    grace) replica x starts and reads one page; it ticks every 3 s (one page per tick: a slow
    host, or ~10x the entries at 0.1 s per tick). Entries read at start-up and at 10:00:06 are
    taken over. The page read at 10:00:09 has its unsent claim aged at the *read* instant
    (`_unsent_to_ask(now)`, whereas the missed slots are now counted at `at`, beat's start):
    9 s > 8 s, so it is an "old" unsent claim, which "skip" drops. ~1 000 entries never publish
    10:00:00, though their claim was 6 s old when beat started (x read as of its start would
    have taken them over, as it did for the first pages).
    """
    one_page_per_read(monkeypatch)
    clock = FakeClock("2026-03-02T09:59:50+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    names = [f"rt{i:04}" for i in range(4000)]
    manager.add_many(
        {"name": n, "task": "reports.minute", "schedule": "* * * * *", "catchup": "skip"}
        for n in names
    )
    clock.set("2026-03-02T10:00:00.100+00:00")
    claimed = dead_replica_claims(redis_url, names, slot_at("10:00"), runtime=True)
    clock.set("2026-03-02T10:00:06+00:00")
    x = make(clock, "x", fork_scheduler_claim_lease=3)
    assert x.runtime.loading
    wait_for_redis_time(redis_url, claimed + 3)  # the claims' lease (3 s) runs out
    tick_for(x.tick, clock, 9, step=3)  # a page at 10:00:06, :09, :12, :15
    assert not x.runtime.loading
    tick_for(x.tick, clock, 5, step=0.25)
    published = fired(x.publisher)
    missing = sorted(n for n in names if (n, at("10:00")) not in published)
    assert missing == [], f"{len(missing)} unsent claims of 10:00:00 never taken over"
    assert max(published.values()) == 1


def test_a_slot_due_during_the_read_fires_when_the_view_changes_while_it_waits_for_its_mark(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, read-late row): "a slot that fell due while the pages were read
    fires when its page is read, whatever the entry's catch-up policy (a replica reading is not
    a replica down)"; 1501829: "an entry's slots wait until its high-water mark is read".

    Sequence: 12 000 static yearly entries (so that the start-up catch-up has more than one
    MARKS_BATCH of 5 000 marks to read) and 4 000 runtime `* * * * *` entries with
    catchup="skip"; fork_scheduler_owner_grace=1 (the default: the replica follows a view). A
    lone replica x starts at 10:00:51 and reads one page per tick, ticking every 5 s (a long
    read). The page read at 10:01:01 queues each of its entries' 10:01:00 as a *retry* (due
    during the read); their marks are not read in that tick (the backlog), so `_work_for`
    pushes each retry to `self.deferred` for CATCH_UP_WAIT. At 10:01:03 the Manager adds one
    unrelated entry; at the next tick (10:01:06) the poll moves the runtime version, x's view
    changes, and `_follow_owners` moves every deferred item back to the queue with
    `queue.push(when, entry, slot)` — dropping `retry=True` (and `takeover`). The former retry
    is now a *chain* item, decided by `slots_due(..., grace)`: 10:01:00 is 6 s old, a missed
    slot, and "skip" drops it (and the entry gets a second chain: the queue grows by one item
    per such entry, for good). Every entry of that page misses 10:01:00. Without the unrelated
    add (no view change) the same entries publish it: the retry survives the wait.
    (Only the entries of that page are checked: chain items of earlier pages deferred at
    10:01:01 and decided at 10:01:06 are late wake-ups, which the catch-up rule may drop.)
    Fixed twice over: `_follow_owners` keeps the flags, and the marks of entries with a due
    slot are now read out of turn, so the retry no longer waits in `deferred` at all.
    """
    one_page_per_read(monkeypatch)
    clock = FakeClock("2026-03-02T10:00:40+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    names = [f"rt{i:04}" for i in range(4000)]
    manager.add_many(
        {"name": n, "task": "reports.minute", "schedule": "* * * * *", "catchup": "skip"}
        for n in names
    )
    clock.set("2026-03-02T10:00:51+00:00")
    x = make(clock, "x", beat_schedule=padding(12_000), fork_scheduler_owner_grace=1)
    assert x.ownership is not None and x.runtime.loading
    x.tick()  # 10:00:51
    clock.advance(5)
    x.tick()  # 10:00:56
    clock.advance(5)
    before = runtime_names(x)
    x.tick()  # 10:01:01: a page whose 10:01:00 is a retry
    read_after_the_slot = runtime_names(x) - before
    assert read_after_the_slot
    clock.set("2026-03-02T10:01:03+00:00")
    manager.add("unrelated", "reports.yearly", "0 0 1 1 *")
    clock.set("2026-03-02T10:01:06+00:00")
    tick_for(x.tick, clock, 15, step=0.5)
    assert not x.runtime.loading
    published = fired(x.publisher)
    missing = sorted(n for n in read_after_the_slot if (n, at("10:01")) not in published)
    assert missing == [], (
        f"{len(missing)} of {len(read_after_the_slot)} entries read after 10:01:00 never "
        "published it"
    )
    assert max(published.values()) == 1


def fail_first_marks_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first `high_water_marks` call of any replica meets redis.ConnectionError on every
    retry (a blip of a few ms); later calls succeed. Returns the call counter."""
    real = RedisBackend.high_water_marks
    calls: list[int] = []

    def blip(self: RedisBackend, entries: Any) -> Any:
        calls.append(len(entries))
        if len(calls) > 1:
            return real(self, entries)

        def refused(*args: Any, **kwargs: Any) -> Any:
            raise redis.ConnectionError("Connection refused")

        monkeypatch.setattr(self, "_pipelined", refused)
        try:
            return real(self, entries)
        finally:
            monkeypatch.delattr(self, "_pipelined")

    monkeypatch.setattr(RedisBackend, "high_water_marks", blip)
    return calls


def test_missed_slots_are_caught_up_when_the_first_marks_read_meets_a_blip(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, "All replicas down for a while": the first replica to start
    applies each entry's catch-up policy, `"all"` fires each missed slot; "Redis unreachable
    when beat starts": the marks are read in batches "and while Redis cannot be reached those
    batches wait and are tried again ... the catch-up of slots missed while all replicas were
    down happens when Redis is back"; start-up read row (1501829): "its slots wait until its
    high-water mark is read, so that the missed ones are claimed first").

    Sequence: static entry `job` (`* * * * *`, catchup="all"). A replica publishes 10:00:00
    and stops; all replicas are down until 10:04:59.8, when x starts. Its first tick's marks
    read meets a connection error (every retry of one pipeline: a blip); x backs off 1 s
    (`next_read`). Redis answers again at once. At 10:05:00.05 `job`'s chain item is due;
    `_work_for` defers an entry pending the catch-up only when `seconds_to_next_read()` is 0,
    so during the back-off it claims 10:05:00 (Redis is back), moving the mark to 10:05:00.
    At 10:05:00.8 the marks are read: the reference is the mark 10:05:00, and 10:01..10:04 —
    the slots "all" owes — are never published (claiming them now would be refused anyway).
    """
    clock = FakeClock("2026-03-02T09:59:59.500+00:00")
    schedule = {"job": {"task": "reports.minute", "schedule": "* * * * *", "catchup": "all"}}
    first = make(clock, "first", beat_schedule=schedule)
    tick_for(first.tick, clock, 1.5, step=0.25)
    assert fired(first.publisher)[("job", at("10:00"))] == 1
    first.close()
    calls = fail_first_marks_read(monkeypatch)
    clock.set("2026-03-02T10:04:59.800+00:00")
    x = make(clock, "x", beat_schedule=schedule)
    tick_for(x.tick, clock, 5, step=0.25)
    assert len(calls) >= 2  # the blip, then a read that succeeded
    published = fired(x.publisher)
    assert published[("job", at("10:05"))] == 1
    missing = [s for s in ("10:01", "10:02", "10:03", "10:04") if ("job", at(s)) not in published]
    assert missing == [], f"catchup='all' never published {missing}"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known and documented (guarantees.md, runtime change row): a replica that starts "
        "after a change counts the entry's missed slots from the change; the earlier "
        "definition, and so its missed slots, is unknown to it"
    ),
)
def test_catch_up_all_keeps_the_slots_missed_before_an_update_made_while_every_replica_was_down(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, "All replicas down for a while": the first replica to start
    applies the entry's catch-up policy, `"all"` fires each missed slot; runtime change row:
    "Slots of the earlier definition already due at that instant still fire (unless the change
    disables the entry or removes it)"; the only documented limit concerns slots due *between a
    replica's start and the change*).

    Sequence: runtime entry `job` (`* * * * *`, catchup="all"); a replica publishes 10:00:00
    and stops: every replica is down. At 10:02:30 `Manager.update("job", kwargs={"v": 2})`
    (schedule unchanged). At 10:04:59.8 x starts and reads everything. 1501829 floors the
    catch-up reference at the entry's last change (`reference = max(mark, since)`), so only
    10:03 and 10:04 are caught up; 10:01 and 10:02 — due, and owed by "all", when the update
    was made — are never published (before 1501829 they were). A kwargs tweak during an outage
    silently cancels the catch-up of everything missed before it.
    """
    clock = FakeClock("2026-03-02T09:59:50+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add("job", "reports.minute", "* * * * *", catchup="all")
    clock.set("2026-03-02T09:59:59.500+00:00")
    first = make(clock, "first")
    tick_for(first.tick, clock, 1.5, step=0.25)
    assert fired(first.publisher)[("job", at("10:00"))] == 1
    first.close()
    clock.set("2026-03-02T10:02:30+00:00")
    manager.update("job", kwargs={"v": 2})
    clock.set("2026-03-02T10:04:59.800+00:00")
    x = make(clock, "x")
    tick_for(x.tick, clock, 5, step=0.25)
    published = fired(x.publisher)
    assert published[("job", at("10:05"))] == 1
    missing = [s for s in ("10:01", "10:02", "10:03", "10:04") if ("job", at(s)) not in published]
    assert missing == [], f"catchup='all' never published {missing}"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known and documented (guarantees.md, runtime change row): an entry added and "
        "changed within one refresh is, for a replica that saw neither, scheduled from "
        "the add under the changed definition"
    ),
)
def test_an_entry_added_then_rescheduled_between_two_polls_of_the_read_fires_no_slot_before_it(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, runtime change row): "every replica schedules the entry from its
    first slot after that instant [the change]: what `add` and `update` answer as next_run
    fires"; read-late row (1501829): "an entry added during the read is scheduled from when it
    was added, one changed from when it was changed".

    Sequence: 3 000 yearly runtime entries; a lone replica x starts at 10:00:57.5 and reads one
    page per tick (0.25 s ticks, refresh 1 s). At 10:00:58.2 `add("late", yearly)`; at
    10:00:59.6 `update("late", schedule=1)` (every second; `update` answers next_run
    10:01:00). x's next poll (still reading) sees one change of an entry it does not know, with
    `added` = 10:00:58.2 and `since` = 10:00:59.6; `_queue_read_late` takes `began = added`
    (it prefers the add over the later change), so the every-second schedule starts at
    10:00:59: a slot of the new definition 0.6 s before it existed is published (the yearly
    definition in force then had no slot there). (A replica done reading takes the same
    `added` in `_refresh_runtime_entries`.)
    """
    one_page_per_read(monkeypatch)
    clock = FakeClock("2026-03-02T10:00:57.500+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(
        {"name": f"rt{i:04}", "task": "reports.yearly", "schedule": "0 0 1 1 *"}
        for i in range(3000)
    )
    x = make(clock, "x")
    x.tick()  # polls at 10:00:57.5
    clock.set("2026-03-02T10:00:58.200+00:00")
    manager.add("late", "reports.yearly", "0 0 1 1 *")
    clock.set("2026-03-02T10:00:59.600+00:00")
    job = manager.update("late", schedule=1)
    assert job.next_run == datetime.fromisoformat("2026-03-02T10:01:00+00:00")
    assert x.runtime.loading
    tick_for(x.tick, clock, 3, step=0.25)
    late = sorted(slot for name, slot in fired(x.publisher) if name == "late")
    assert "2026-03-02T10:01:00+00:00" in late
    assert late[0] >= "2026-03-02T10:01:00+00:00", f"slots before the change: {late}"


# -- passing probes ----------------------------------------------------------------------------


def test_probe_equal_crontabs_of_different_apps_and_a_subclass_keep_their_own_zones() -> None:
    """Probe (passes). 1501829 resolves plain crontabs once per value (`crontab_key`). One
    `entries_from_config` batch (one memo) with equal-field crontabs: unbound, bound to an app
    in Europe/Berlin, bound to an app in Asia/Tokyo, a crontab subclass and one with a
    `nowfun`. Since round 61 a crontab's own app plays no part, as in Celery's beat (it binds
    every schedule to its own app): all are read in the beat's zone (UTC here), and an entry's
    `timezone` key still gives its own."""
    from zoneinfo import ZoneInfo

    from celery import Celery
    from celery.schedules import crontab

    from celery_fork_scheduler.entry import entries_from_config

    berlin = Celery("berlin", set_as_current=False)
    berlin.conf.timezone = "Europe/Berlin"
    tokyo = Celery("tokyo", set_as_current=False)
    tokyo.conf.timezone = "Asia/Tokyo"

    class MyCrontab(crontab):  # type: ignore[misc]
        pass

    config = {
        "plain": {"task": "t", "schedule": crontab(minute="0", hour="9")},
        "berlin": {"task": "t", "schedule": crontab(minute="0", hour="9", app=berlin)},
        "berlin2": {"task": "t", "schedule": crontab(minute=0, hour=9, app=berlin)},
        "tokyo": {"task": "t", "schedule": crontab(minute="0", hour="9", app=tokyo)},
        "sub": {"task": "t", "schedule": MyCrontab(minute="0", hour="9", app=tokyo)},
        "nowfun": {"task": "t", "schedule": crontab(minute="0", hour="9", nowfun=lambda: None)},
    }
    entries = entries_from_config(config, default_timezone=ZoneInfo("UTC"))
    after = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    first = {name: entry.schedule.next_slot(after) for name, entry in entries.items()}
    nine_utc = datetime(2026, 3, 2, 9, tzinfo=timezone.utc)
    assert set(first.values()) == {nine_utc}
    keyed = entries_from_config(
        {"berlin": {**config["berlin"], "timezone": "Europe/Berlin"}, "tokyo": config["tokyo"]},
        default_timezone=ZoneInfo("UTC"),
    )
    assert keyed["berlin"].schedule.next_slot(after) == datetime(2026, 3, 2, 8, tzinfo=timezone.utc)
    assert keyed["tokyo"].schedule.next_slot(after) == nine_utc


def test_probe_the_static_digest_is_equal_for_equal_configs_and_differs_for_different_ones() -> (
    None
):
    """Probe (passes). `_digest` (1501829: 10 000 entries per json.dumps, names included, a
    chunk that cannot be encoded falls back to each entry on its own): 10 001 entries with a
    set argument, a NaN kwarg and a lazy (callable) args entry in the first chunk give equal
    digests for two equal configs built separately; changing one entry's schedule in either
    chunk, renaming one entry, or swapping two entries' schedules changes the digest."""
    from zoneinfo import ZoneInfo

    from celery_fork_scheduler.entry import entries_from_config
    from celery_fork_scheduler.static_build import static_digest

    def lazy_args() -> list[int]:
        return [1]

    def config(**changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            f"e{i:05}": {"task": "t", "schedule": "* * * * *"} for i in range(10_001)
        }
        base["e00001"] = {"task": "t", "schedule": "* * * * *", "args": [{1, 2}]}
        base["e00002"] = {"task": "t", "schedule": "* * * * *", "kwargs": {"x": float("nan")}}
        base["e00003"] = {"task": "t", "schedule": "* * * * *", "args": lazy_args}
        base["e00004"] = {"task": "t", "schedule": "*/2 * * * *"}
        base.update(changes)
        return base

    def digest(beat_schedule: dict[str, Any]) -> int:
        entries = entries_from_config(beat_schedule, default_timezone=ZoneInfo("UTC"))
        return static_digest(entries[name] for name in sorted(entries))

    reference = digest(config())
    assert digest(config()) == reference
    variants = [
        config(e00010={"task": "t", "schedule": "*/5 * * * *"}),
        config(e10000={"task": "t", "schedule": "*/5 * * * *"}),
        config(
            e00005={"task": "t", "schedule": "*/2 * * * *"},
            e00004={"task": "t", "schedule": "* * * * *"},
        ),
    ]
    renamed = config()
    renamed["z"] = renamed.pop("e00007")
    variants.append(renamed)
    assert all(digest(v) != reference for v in variants)


def test_probe_a_plain_start_with_more_due_entries_than_a_marks_batch_catches_every_one_up(
    make: Any, redis_url: str
) -> None:
    """Probe (passes). Start-up read row / "All replicas down": 6 000 static `* * * * *`
    entries (more than MARKS_BATCH = 5 000), catchup="latest"; a replica publishes every
    entry's 10:00:00 and stops; all down until 10:04:59.99. x starts (no paging: static
    entries) and first ticks at 10:05:00: one batch of marks is read while 10:05:00 is due:
    the marks of the second batch are read out of turn and each entry publishes 10:04:00 (the
    latest missed) and 10:05:00, once."""
    schedule = {f"st{i:04}": {"task": "t", "schedule": "* * * * *"} for i in range(6000)}
    clock = FakeClock("2026-03-02T09:59:59.800+00:00")
    first = make(clock, "first", beat_schedule=schedule)
    tick_for(first.tick, clock, 1.2, step=0.2)
    assert len(fired(first.publisher)) == 6000
    first.close()
    clock.set("2026-03-02T10:04:59.990+00:00")
    x = make(clock, "x", beat_schedule=schedule)
    clock.advance(0.01)
    x.tick()  # 10:05:00: one batch of marks read; the others' read out of turn (due now)
    tick_for(x.tick, clock, 2, step=0.05)
    published = fired(x.publisher)
    assert all(published[(n, at(s))] == 1 for n in schedule for s in ("10:04", "10:05"))
    assert max(published.values()) == 1
