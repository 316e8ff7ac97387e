"""Adversary round 13: the paged start-up read of runtime entries after round 12's fixes
(commits db57c08, 0adf780).

Real Redis; a fake clock. ``SETUP_LOAD_SECONDS`` / ``TICK_LOAD_SECONDS`` are 0, so each start-up
and each tick reads exactly one page (HSCAN's ~1 000 names), as in tests/test_paged_load.py;
a test that wants a whole read sets them back to 1.0 (the fake monotonic clock stands still).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from replica_helpers import fired, make_app, schedulers, tick_for
from startup_helpers import at, fail_after_first_page, one_page_per_read, runtime_names

from celery_fork_scheduler import Manager
from celery_fork_scheduler import scheduler as scheduler_module
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.store import RuntimeStore
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher


@pytest.fixture(autouse=True)
def one_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    one_page_per_read(monkeypatch)


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url) as make:
        yield make


def whole_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next replica made reads every page at start-up (the fake monotonic stands still)."""
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 1.0)


def one_page_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 0.0)


def ran_then_all_down(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch, count: int, **extra: Any
) -> tuple[Manager, FakeClock, list[str]]:
    """``count`` `* * * * *` entries added at 09:59:59.5; one replica publishes every entry's
    10:00:00 and stops: from then on, every replica is down."""
    clock = FakeClock("2026-03-02T09:59:59.500+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    names = [f"rt{i:05}" for i in range(count)]
    manager.add_many(
        {"name": n, "task": "reports.minute", "schedule": "* * * * *", **extra} for n in names
    )
    whole_read(monkeypatch)
    first = make(clock, "first")
    assert not first.runtime.loading
    tick_for(first.tick, clock, 1.5, step=0.25)
    assert len(fired(first.publisher)) == count  # every entry's 10:00:00
    first.close()
    one_page_per_tick(monkeypatch)
    return manager, clock, names


# -- failing -----------------------------------------------------------------------------------


def test_an_entry_changed_during_the_read_catches_up_no_slot_of_its_new_schedule_before_the_change(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, "A runtime entry is added, changed or removed"): every replica
    schedules a changed entry from its first slot after the change's instant; what `update`
    answers as next_run fires. Read-late row: an entry read later is scheduled "from when it
    was last changed, if later" than the start.

    Sequence: 40 `*/10 * * * *` entries (plus 3 000 yearly ones, so that the read takes
    pages), added at 09:59:50. Replica b runs and publishes their 10:00:00 (high-water mark
    10:00:00). At 10:07:20 replica x starts and reads one page. At 10:07:30 every candidate is
    updated to `* * * * *` (next_run 10:08:00). x reads the unread candidates late; each goes
    to the start-up catch-up, which starts from the entry's high-water mark (10:00:00), not from
    the change: under the *new* schedule, 10:01..10:07 were "missed", and the default "latest"
    fires 10:07:00 — a slot of the new definition 30 s before it existed (the old one has no
    slot there). b and x both tick throughout. (The same catch-up from the mark fires it on a
    replica that starts after the update and reads everything at once: not only the paged
    path.)
    """
    clock = FakeClock("2026-03-02T09:59:50+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    candidates = [f"cand{i:02}" for i in range(40)]
    manager.add_many(
        {"name": n, "task": "reports.ten", "schedule": "*/10 * * * *"} for n in candidates
    )
    manager.add_many(
        {"name": f"rt{i:04}", "task": "reports.yearly", "schedule": "0 0 1 1 *"}
        for i in range(3000)
    )
    whole_read(monkeypatch)
    b = make(clock, "b")
    one_page_per_tick(monkeypatch)
    tick_for(b.tick, clock, 20, step=0.5)  # 10:00:10
    assert all(fired(b.publisher)[(n, at("10:00"))] == 1 for n in candidates)
    clock.set("2026-03-02T10:07:20+00:00")
    b.tick()
    x = make(clock, "x")
    assert x.runtime.loading
    unread = set(candidates) - runtime_names(x)
    assert unread
    clock.advance(10)  # 10:07:30
    manager.update_many({"name": n, "schedule": "* * * * *"} for n in candidates)
    assert manager.get(candidates[0]).next_run == datetime.fromisoformat(at("10:08"))
    tick_for(lambda: [b.tick(), x.tick()], clock, 45, step=0.5)  # up to 10:08:15
    published = fired(b.publisher, x.publisher)
    before_change = sorted(n for n in candidates if (n, at("10:07")) in published)
    assert before_change == [], (
        f"{len(before_change)} entries updated at 10:07:30 published slot 10:07:00 of the new "
        f"schedule (read late: {len(unread)})"
    )
    assert all(published[(n, at("10:08"))] == 1 for n in candidates)


def test_entries_read_late_get_the_start_up_catch_up_they_would_have_got_at_the_start(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, read-late row): "Each entry read later is scheduled as if it had
    been read when beat started ...: slots missed before the start follow the start-up
    catch-up"; "All replicas down for a while": with "latest" (default) the latest missed slot
    fires once.

    Sequence: 3 000 `* * * * *` entries (catchup "latest"); a replica publishes 10:00:00 and
    stops; every replica is down until 10:05:59.8, when one starts and reads one page per
    tick (ticks every 0.25 s). Entries read by 10:05:59.8 (two pages) catch up 10:05:00 and then
    fire 10:06:00. The third page is read at 10:06:00.05: its entries' catch-up is computed at
    *that* instant (`run_batch(now)`), where 10:06:00 is a recent slot, so "latest" fires no
    missed slot — and the slot 10:06:00 is then filtered out as not before the first queued
    slot. ~1 000 entries never publish 10:05:00, though read 0.25 s later than the others.
    (Same cause: beat_cron_starting_deadline / catchup_window are measured from the read
    instant instead of the start.)
    """
    _, clock, names = ran_then_all_down(make, redis_url, monkeypatch, 3000)
    clock.set("2026-03-02T10:05:59.800+00:00")
    replica = make(clock, "x")
    assert replica.runtime.loading
    tick_for(replica.tick, clock, 5, step=0.25)
    published = fired(replica.publisher)
    assert all(published[(n, at("10:06"))] == 1 for n in names)
    missing = sorted(n for n in names if (n, at("10:05")) not in published)
    assert missing == [], f"{len(missing)} entries read late never caught up 10:05:00"


def test_catch_up_all_after_a_mid_read_error_with_more_entries_than_a_marks_batch(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, "All replicas down for a while": `"all"` fires each missed slot;
    read-late row: slots missed before the start follow the start-up catch-up; 0adf780: "their
    missed slots go through the start-up catch-up ... also after a mid-read error").

    Sequence: 12 000 `* * * * *` entries with catchup="all"; a replica publishes 10:00:00 and
    stops; all replicas are down until 10:03:59.8. A replica starts, reads one page, and the
    second page raises ConnectionError; the next poll (first tick) reads the other 11 000 at
    once. Their high-water marks are read 5 000 per tick (MARKS_BATCH), but their next slot
    10:04:00 is queued at once: at the tick of 10:04:00.05 it is claimed for every entry, and
    the last batch of marks (2 000 entries, tick of 10:04:00.3) then queues 10:01, 10:02 and
    10:03, which the claim script answers `claimed` (the mark is already 10:04:00). 6 000 slots
    owed by "all" are never published. (A plain start-up reading 12 000 entries at once loses
    the same: not only the new path, but a failed read reaches it with one poll of any size.)
    """
    _, clock, names = ran_then_all_down(make, redis_url, monkeypatch, 12_000, catchup="all")
    clock.set("2026-03-02T10:03:59.800+00:00")
    real_pages = fail_after_first_page(monkeypatch)
    replica = make(clock, "x", fork_scheduler_refresh_interval=0.5)
    monkeypatch.setattr(RuntimeStore, "pages", real_pages)
    tick_for(replica.tick, clock, 5, step=0.25)
    published = fired(replica.publisher)
    missing = {
        slot: sum(1 for n in names if (n, at(slot)) not in published)
        for slot in ("10:01", "10:02", "10:03", "10:04")
    }
    assert missing == dict.fromkeys(missing, 0)


@pytest.mark.xfail(
    strict=True,
    reason="known and documented (guarantees.md, start-up read row): a replica that has not "
    "read an entry when it changes never knew its earlier definition, so it cannot publish that "
    "definition's slots due between its start and the change; replicas that had read it do",
)
def test_a_slot_due_while_its_entry_was_unread_still_fires_after_an_update_of_its_args(
    make: Any, redis_url: str
) -> None:
    """Promise (guarantees.md, runtime change row): "Slots of the earlier definition already
    due at that instant still fire (unless the change disables the entry or removes it)";
    read-late row: "a slot that fell due while the pages were read fires when its page is
    read ... a lone replica publishes the slots of an entry not read yet when its page comes".

    Sequence: 3 000 `* * * * *` entries; a lone replica starts at 10:00:59.8 and reads one
    page. At 10:01:00.5 — slot 10:01:00 is due and the replica has not read them yet — 50
    unread entries get new kwargs (the schedule is unchanged). The replica reads them late "from
    the change" (10:01:00.5): their first slot is 10:02:00, and the slot 10:01:00, due under
    the definition in force, is never published. A replica that had read them at start-up
    would have published it (the earlier definition keeps its due slots).
    """
    clock = FakeClock("2026-03-02T10:00:59.800+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    names = [f"rt{i:04}" for i in range(3000)]
    manager.add_many({"name": n, "task": "reports.minute", "schedule": "* * * * *"} for n in names)
    replica = make(clock, "x")
    assert replica.runtime.loading
    changed = sorted(set(names) - runtime_names(replica))[:50]
    clock.advance(0.7)  # 10:01:00.5
    manager.update_many({"name": n, "kwargs": {"v": 2}} for n in changed)
    tick_for(replica.tick, clock, 70, step=0.5)  # up to 10:02:10.5
    published = fired(replica.publisher)
    assert all(published[(n, at("10:02"))] == 1 for n in names)
    missing = [n for n in changed if (n, at("10:01")) not in published]
    assert missing == [], f"{len(missing)} entries never published 10:01:00"


def test_an_entry_added_then_updated_between_two_polls_of_the_read_fires_what_add_answered(
    make: Any, redis_url: str
) -> None:
    """Promise (guarantees.md, runtime change row): "what `add` and `update` answer as
    next_run fires, even if a replica loads the change after it".

    Sequence: 6 000 yearly entries; a lone replica starts at 10:00:59.5 and polls. At 10:00:59.9
    `add("late", "* * * * *")` answers next_run 10:01:00; at 10:01:00.2 `update("late",
    kwargs=...)`. Its next poll (10:01:00.5, still reading pages) sees one change of an entry it
    does not know and reads it "late" from the last change (10:01:00.2) — the instant of the
    add is ignored (a replica done reading uses `Update.added` for the same case, and publishes
    10:01:00: probe below). The slot `add` answered is never published.
    """
    clock = FakeClock("2026-03-02T10:00:59.500+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(
        {"name": f"rt{i:04}", "task": "reports.yearly", "schedule": "0 0 1 1 *"}
        for i in range(6000)
    )
    replica = make(clock, "x")
    replica.tick()  # polls at 10:00:59.5
    clock.advance(0.4)  # 10:00:59.9
    job = manager.add("late", "reports.minute", "* * * * *")
    assert job.next_run == datetime.fromisoformat(at("10:01"))
    clock.advance(0.3)  # 10:01:00.2
    manager.update("late", kwargs={"v": 2})
    clock.advance(0.3)  # 10:01:00.5
    assert replica.runtime.loading
    tick_for(replica.tick, clock, 5, step=0.25)
    published = fired(replica.publisher)
    assert published[("late", at("10:01"))] == 1, sorted(k for k in published if k[0] == "late")


# -- passing probes ----------------------------------------------------------------------------


def test_probe_an_entry_added_then_updated_between_two_polls_after_the_read_fires_what_add_answered(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe (passes): the control of the test above. Same add at 10:00:59.9 and update at
    10:01:00.2 between two polls, on a replica that has read everything: 10:01:00 fires."""
    clock = FakeClock("2026-03-02T10:00:59.500+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(
        {"name": f"rt{i:04}", "task": "reports.yearly", "schedule": "0 0 1 1 *"} for i in range(10)
    )
    replica = make(clock, "x")
    replica.tick()
    assert not replica.runtime.loading
    clock.advance(0.4)
    manager.add("late", "reports.minute", "* * * * *")
    clock.advance(0.3)
    manager.update("late", kwargs={"v": 2})
    clock.advance(0.3)
    tick_for(replica.tick, clock, 5, step=0.25)
    assert fired(replica.publisher)[("late", at("10:01"))] == 1


def test_probe_max_runs_holds_for_the_slots_of_an_entry_read_late(
    make: Any, redis_url: str
) -> None:
    """Probe (passes). Promise: max_runs is decided in the claim script. Sequence: 3 000
    yearly entries; a replica starts at 10:00:00.1 and reads one page; at 10:00:00.2, 20 unread
    entries become every-second with max_runs=2; the replica reads them 5 s later (the read
    pushes each slot due meanwhile as a retry): each publishes exactly 2 runs, then is removed."""
    clock = FakeClock("2026-03-02T10:00:00.100+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    names = [f"rt{i:04}" for i in range(3000)]
    manager.add_many({"name": n, "task": "t", "schedule": "0 0 1 1 *"} for n in names)
    replica = make(clock, "x")
    changed = sorted(set(names) - runtime_names(replica))[:20]
    clock.advance(0.1)
    manager.update_many({"name": n, "schedule": 1, "max_runs": 2} for n in changed)
    clock.advance(5)
    tick_for(replica.tick, clock, 10, step=0.5)
    published = fired(replica.publisher)
    runs = {n: sum(v for (e, _), v in published.items() if e == n) for n in changed}
    assert runs == dict.fromkeys(changed, 2)
    assert not set(changed) & runtime_names(replica)


class _TimedPublisher(RecordingPublisher):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: list[tuple[str, datetime, datetime]] = []

    def publish(self, occurrence: Occurrence) -> None:
        self.at.append((occurrence.entry, occurrence.slot, self.clock()))
        super().publish(occurrence)


def test_probe_jittered_entries_read_late_are_never_early_and_miss_nothing(
    make: Any, redis_url: str
) -> None:
    """Probe (passes). Promise 2 (never before slot + jitter offset) and the read-late row.
    Sequence: 3 000 `* * * * *` entries with jitter 50 s; a replica starts at 10:00:58 and
    reads one page per 1 s tick: no occurrence is published before its publish instant (fake
    clock), each slot once, every entry's 10:01 and 10:02."""
    clock = FakeClock("2026-03-02T10:00:58+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    names = [f"rt{i:04}" for i in range(3000)]
    manager.add_many({"name": n, "task": "t", "schedule": "* * * * *", "jitter": 50} for n in names)
    publisher = _TimedPublisher(clock)
    replica = make(clock, "x", publisher=publisher)
    tick_for(replica.tick, clock, 130, step=1.0)
    early = [(n, s, t) for n, s, t in publisher.at if t < replica.entries[n].publish_at(s)]
    published = fired(publisher)
    assert early == [] and max(published.values()) == 1
    assert all((n, at(s)) in published for n in names for s in ("10:01", "10:02"))


def test_probe_a_flush_in_the_middle_of_the_read_leaves_only_the_entries_added_since(
    make: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    """Probe (passes). Promise (Redis loses data row): runtime entries the data loss took are
    dropped. Sequence: 3 000 `* * * * *` entries; a replica reads one page; FLUSHALL; two new
    entries are added; the replica (which goes on reading pages of the emptied hash) ends with
    only the two new entries and publishes nothing of the lost ones."""
    clock = FakeClock("2026-03-02T10:00:50+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(
        {"name": f"rt{i:04}", "task": "t", "schedule": "* * * * *"} for i in range(3000)
    )
    replica = make(clock, "x", fork_scheduler_refresh_interval=0.5)
    assert replica.runtime.loading
    redis_client.flushall()
    manager.add_many({"name": n, "task": "t", "schedule": "*/2 * * * *"} for n in ("new1", "new2"))
    tick_for(replica.tick, clock, 80, step=0.5)
    assert runtime_names(replica) == {"new1", "new2"}
    assert {n for n, _ in fired(replica.publisher)} == {"new1", "new2"}
