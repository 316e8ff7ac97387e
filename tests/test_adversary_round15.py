"""Adversary round 15: the start-up catch-up reading an entry's marks out of turn
(commit 1e3d375: ``StartupCatchUp.check_now``, ``Scheduler._missed_first``) and round 14's
fixes (96ba2d7: unsent claims judged as of ``at``; deferred items keep their flags).

Real Redis; a fake clock. ``startup_catchup.MARKS_BATCH`` is made small so that an entry's
batch of marks is still to come when its slot falls due (as for the last entries of a store of
a million).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from replica_helpers import fired, make_app, schedulers, tick_for
from startup_helpers import at, dead_replica_claims, padding, slot_at, wait_for_redis_time

from celery_fork_scheduler import Manager, startup_catchup, task_id_for
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.testing import FakeClock


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url) as make:
        yield make


def fail_marks_read(monkeypatch: pytest.MonkeyPatch, failing: set[int]) -> list[list[str]]:
    """The `high_water_marks` calls numbered in ``failing`` (1-based, any replica) meet
    redis.ConnectionError on every retry of their pipeline (a blip of a few ms); the others
    succeed. Returns the names each call asked for."""
    real = RedisBackend.high_water_marks
    calls: list[list[str]] = []

    def blip(self: RedisBackend, entries: Any) -> Any:
        calls.append(list(entries))
        if len(calls) not in failing:
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


# -- failing -----------------------------------------------------------------------------------


def test_a_blip_on_the_out_of_turn_marks_read_does_not_cancel_the_catch_up(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, "Redis unreachable when beat starts": the marks "are read in
    batches during the first ticks, and while Redis cannot be reached those batches wait and
    are tried again ... the catch-up of slots missed while all replicas were down happens when
    Redis is back"; start-up read row: "its slots wait until its high-water mark is read, so
    that the missed ones are claimed first"; `"all"` fires each missed slot).

    Sequence: static `zjob` (`* * * * *`, catchup="all") after 3 yearly padding entries;
    MARKS_BATCH = 1. A replica publishes 10:00:00 and stops; every replica is down until
    10:04:59.8, when x starts. Tick 10:04:59.8 reads pad000's mark (ok); tick 10:05:00.05
    reads pad001's (ok), then `zjob`'s 10:05:00 is due and `_missed_first` reads its mark out
    of turn: that one read meets a connection blip (every retry of one pipeline).
    `_missed_first` then lets the due item "meet the outage like any other" — but Redis
    answers again at once, so x *claims* 10:05:00, raising the mark. When `zjob`'s batch is
    read (10:05:00.55) the reference is the mark 10:05:00: 10:01..10:04, owed by "all", are
    never published (round 14's back-off variant of the same loss was fixed; this is the blip
    landing on the out-of-turn read itself).
    """
    monkeypatch.setattr(startup_catchup, "MARKS_BATCH", 1)
    clock = FakeClock("2026-03-02T09:59:59.500+00:00")
    schedule = {
        **padding(3),
        "zjob": {"task": "reports.minute", "schedule": "* * * * *", "catchup": "all"},
    }
    first = make(clock, "first", beat_schedule=schedule)
    tick_for(first.tick, clock, 1.5, step=0.25)
    assert fired(first.publisher)[("zjob", at("10:00"))] == 1
    first.close()
    clock.set("2026-03-02T10:04:59.800+00:00")
    x = make(clock, "x", beat_schedule=schedule)
    calls = fail_marks_read(monkeypatch, {3})
    tick_for(x.tick, clock, 5, step=0.25)
    assert calls[2] == ["zjob"]  # the out-of-turn read met the blip
    published = fired(x.publisher)
    assert published[("zjob", at("10:05"))] == 1
    missing = [s for s in ("10:01", "10:02", "10:03", "10:04") if ("zjob", at(s)) not in published]
    assert missing == [], f"catchup='all' never published {missing}"


def test_an_unsent_claim_is_taken_over_when_its_entry_changes_before_its_marks_are_read(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, promise 4: "a starting replica reads every unsent claim of every
    entry and asks for each"; failure table, "no other replica is running": it "takes over
    those no older than the claim lease plus the catch-up grace"; runtime change row: "Slots
    of the earlier definition already due at that instant still fire ... and retries of a slot
    (pending, takeover) follow the entry by name").

    Sequence: runtime entry `job` (`* * * * *`). Replica "dead" wins 10:00:00 at 10:00:00.1
    and dies unsent; no replica runs. At 10:00:06 x starts (claim lease 3 s; the claim is 6 s
    old: older than the grace, so 10:00:00 is not `job`'s first queued slot, but within lease +
    grace = 8 s, so it is owed a takeover) and reads `job` at once (a small store), but its mark
    is read in a later batch (20 static padding entries, MARKS_BATCH = 1: one per tick). At
    10:00:06.5 `Manager.update("job", kwargs={"v": 2})`.
    x's next refresh puts the new definition; when `job`'s batch comes, `_check` passes over
    the item because `entries["job"]` is no longer the entry it queued — the mark, and its
    unsent claim of 10:00:00, is never looked at. The next chain slot (10:01:00) is claimed,
    the mark moves past 10:00:00, and that slot is never published nor reported. Without the
    update, x takes it over once the lease has run out (see the probe below).
    """
    monkeypatch.setattr(startup_catchup, "MARKS_BATCH", 1)
    clock = FakeClock("2026-03-02T09:59:50+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add("job", "reports.minute", "* * * * *")
    clock.set("2026-03-02T10:00:00.100+00:00")
    claimed = dead_replica_claims(redis_url, ["job"], slot_at("10:00"), runtime=True)
    clock.set("2026-03-02T10:00:06+00:00")
    x = make(clock, "x", beat_schedule=padding(20), fork_scheduler_claim_lease=3)
    assert "job" in x.entries and x.catch_up.pending("job")
    wait_for_redis_time(redis_url, claimed + 3)  # the claims' lease (3 s) runs out
    x.tick()
    clock.set("2026-03-02T10:00:06.500+00:00")
    manager.update("job", kwargs={"v": 2})
    tick_for(x.tick, clock, 66, step=0.25)  # to 10:01:12.5
    published = fired(x.publisher)
    assert published[("job", at("10:01"))] == 1
    assert published[("job", at("10:00"))] == 1, "the dead replica's claim was never taken over"


def test_the_latest_missed_slot_fires_when_its_entry_changes_before_its_marks_are_read(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (guarantees.md, "All replicas down for a while": the first replica to start
    applies each entry's catch-up policy — `"latest"`, the default: the latest missed slot
    fires once; runtime change row: "Slots of the earlier definition already due at that
    instant still fire (unless the change disables the entry or removes it)". Its documented
    limit is only "a replica that starts *after* a change counts the entry's missed slots from
    the change").

    Sequence: runtime entry `job` (`* * * * *`, default catch-up); a replica publishes
    10:00:00 and stops; every replica is down. At 10:04:30 x starts and reads `job` (its mark
    is read in a later batch: 20 static padding entries, MARKS_BATCH = 1). At 10:04:30.5 —
    after x started — `Manager.update("job", kwargs={"v": 2})`. At x's next refresh the entry
    object changes; `job`'s catch-up item is then passed over (`entries.get(name) is not
    entry`), no item is queued for the new object, and 10:04:00 — missed, due long before the
    change — never fires. A replica whose batch had been read before the update would have
    published it.
    """
    monkeypatch.setattr(startup_catchup, "MARKS_BATCH", 1)
    clock = FakeClock("2026-03-02T09:59:50+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add("job", "reports.minute", "* * * * *")
    clock.set("2026-03-02T09:59:59.500+00:00")
    first = make(clock, "first")
    tick_for(first.tick, clock, 1.5, step=0.25)
    assert fired(first.publisher)[("job", at("10:00"))] == 1
    first.close()
    clock.set("2026-03-02T10:04:30+00:00")
    x = make(clock, "x", beat_schedule=padding(20))
    assert x.catch_up.pending("job")
    x.tick()
    clock.set("2026-03-02T10:04:30.500+00:00")
    manager.update("job", kwargs={"v": 2})
    tick_for(x.tick, clock, 40, step=0.25)  # to 10:05:10.5
    published = fired(x.publisher)
    assert published[("job", at("10:05"))] == 1
    assert published[("job", at("10:04"))] == 1, "the latest missed slot never fired"


# -- passing probes ----------------------------------------------------------------------------


def test_probe_without_the_update_the_unsent_claim_is_taken_over(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe (passes): the control of the unsent-claim test above, without the update. The
    dead replica's 10:00:00 (6 s old at x's start) is taken over when `job`'s batch of marks
    is read (20 padding batches later), and published once; 10:01:00 once."""
    monkeypatch.setattr(startup_catchup, "MARKS_BATCH", 1)
    clock = FakeClock("2026-03-02T09:59:50+00:00")
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add("job", "reports.minute", "* * * * *")
    clock.set("2026-03-02T10:00:00.100+00:00")
    claimed = dead_replica_claims(redis_url, ["job"], slot_at("10:00"), runtime=True)
    clock.set("2026-03-02T10:00:06+00:00")
    x = make(clock, "x", beat_schedule=padding(20), fork_scheduler_claim_lease=3)
    wait_for_redis_time(redis_url, claimed + 3)  # the claims' lease (3 s) runs out
    tick_for(x.tick, clock, 66.5, step=0.25)
    published = fired(x.publisher)
    assert published[("job", at("10:00"))] == 1
    assert published[("job", at("10:01"))] == 1


def test_probe_a_takeover_read_out_of_turn_and_the_next_chain_slot_in_one_tick(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe (passes): failure table, "no other replica is running" + start-up read row. Static
    `job` every 10 s; "dead" wins 10:00:00 and dies unsent. x starts at 10:00:06 (claim lease
    3 s, lease run out), `job`'s batch 200 batches away (MARKS_BATCH = 1). At 10:00:10 its
    chain slot is due: its mark is read out of turn, the takeover of 10:00:00 is queued before
    the chain item, and both go in one claim batch (takeover-only first, then 10:00:10): each
    is published once, 10:00:00 with its own task id."""
    monkeypatch.setattr(startup_catchup, "MARKS_BATCH", 1)
    schedule = {**padding(200), "job": {"task": "reports.ten", "schedule": 10.0}}
    clock = FakeClock("2026-03-02T10:00:00.100+00:00")
    claimed = dead_replica_claims(redis_url, ["job"], slot_at("10:00"))
    clock.set("2026-03-02T10:00:06+00:00")
    x = make(clock, "x", beat_schedule=schedule, fork_scheduler_claim_lease=3)
    wait_for_redis_time(redis_url, claimed + 3)  # the claims' lease (3 s) runs out
    tick_for(x.tick, clock, 15, step=0.25)  # to 10:00:21
    assert x.catch_up.unchecked  # `job`'s batch not reached: it was read out of turn
    published = fired(x.publisher)
    assert published[("job", at("10:00"))] == 1
    assert published[("job", "2026-03-02T10:00:10+00:00")] == 1
    assert max(published.values()) == 1
    ids = {o.task_id for o in x.publisher.occurrences if o.entry == "job"}
    assert task_id_for("job", slot_at("10:00")) in ids


def test_probe_two_replicas_starting_together_with_ownership_catch_up_each_slot_once(
    make: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe (passes): "All replicas down for a while" + ownership. 30 static `* * * * *`
    entries with catchup="all" after 100 padding entries (MARKS_BATCH = 1: their marks are
    read out of turn when 10:05:00 falls due); a replica published 10:00:00 and stopped. x and
    y (owner grace 1 s: they divide the entries) start at 10:04:59.8 and tick in turn: every
    entry publishes 10:01..10:05 exactly once across the two."""
    monkeypatch.setattr(startup_catchup, "MARKS_BATCH", 1)
    jobs = {
        f"job{i:02}": {"task": "t", "schedule": "* * * * *", "catchup": "all"} for i in range(30)
    }
    schedule = {**padding(100), **jobs}
    clock = FakeClock("2026-03-02T09:59:59.500+00:00")
    first = make(clock, "first", beat_schedule=schedule)
    tick_for(first.tick, clock, 1.5, step=0.25)
    assert all(fired(first.publisher)[(n, at("10:00"))] == 1 for n in jobs)
    first.close()
    clock.set("2026-03-02T10:04:59.800+00:00")
    x = make(clock, "x", beat_schedule=schedule, fork_scheduler_owner_grace=1)
    y = make(clock, "y", beat_schedule=schedule, fork_scheduler_owner_grace=1)

    def both() -> None:
        x.tick()
        y.tick()

    tick_for(both, clock, 6, step=0.25)
    published = fired(x.publisher, y.publisher)
    for name in jobs:
        for slot in ("10:01", "10:02", "10:03", "10:04", "10:05"):
            assert published[(name, at(slot))] == 1, (name, slot)
    assert max(published.values()) == 1
