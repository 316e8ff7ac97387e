"""Adversary round 53: the restart rule of rounds 49/51 seen from a replica that keeps running
(its retry queue, its takeover retries, ownership's parked chains), and the worker's heartbeat.

Each test's docstring names the promise (with its page), the sequence, what was expected and
what happened, and where. Claims are on a real ``redis-server`` whose clock is the replicas'
fake clock (``virtual_time_redis``): the test crashes it and brings it back from a snapshot
saved earlier, at an instant of the same clock.

Found failing by round 53 (at d14545c) and fixed: the claim script itself refuses a slot due
before Redis's start (plus the early tolerance) that its data does not decide, and another
replica's pending claim made before that start, answering ``unknown`` (reported skipped), so a
replica that keeps running across a restart from older data cannot publish again what was
published before it. Round 53's fourth finding (a run skipped ``busy`` took the marker back
after a restart, then freed it beside the run executing) is
``tests/test_worker_skipped_run_heartbeat.py``.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import restart_helpers
from hand_driven_helpers import RecordingBeat as Beat
from restart_helpers import (
    KEYS,
    beats_fixture,  # noqa: F401 - the fixture beats
    t,
)
from virtual_time_redis import virtual_redis

from celery_fork_scheduler import Manager
from celery_fork_scheduler.testing import RecordingPublisher

#: The task of every entry.
TASK = "adv53.job"


#: ``make_app(url, beat_schedule, **conf)``: the beat app of this round (broker ``memory://``).
make_app = partial(restart_helpers.make_app, "adv53", TASK)


def replica(beats: list[Any], server: Any, schedule: dict[str, Any], name: str, **kw: Any) -> Any:
    """A beat replica ``name`` of the app, set up, on ``server``'s clock (``publisher``: its
    :class:`RecordingPublisher`; other keywords: settings)."""
    publisher = kw.pop("publisher", None)
    beat = Beat(make_app(server.url, schedule, **kw), server.clock, name, publisher)
    beats.append(beat)
    beat.scheduler.setup_schedule()
    return beat


def tick_until(clock: Any, replicas: list[Any], until: datetime, step: float) -> None:
    """Tick each replica in turn, ``step`` s apart on the clock, until ``until``."""
    while clock() < until:
        for each in replicas:
            each.scheduler.tick()
        clock.advance(step)


def slots_of(beat: Any, name: str = "e") -> set[datetime]:
    return {o.slot for o in beat.publisher.occurrences if o.entry == name}


def hms(slots: Any) -> list[str]:
    return [s.time().isoformat() for s in sorted(slots)]


# -- 1. a running replica's retry after a restart from an older snapshot -------------------------


def test_a_running_replica_wins_again_after_an_rdb_restore_a_slot_the_other_published(
    beats: list[Any], tmp_path: Path
) -> None:
    """Promise: docs/guarantees.md promise 1 (each slot published at most once) and the failure
    row "Redis loses data": "No duplicates"; "Every replica remembers the latest slot Redis
    confirmed for each entry and sends it with each claim ... A mark that is present but older
    than a replica's known mark ... is raised to it". The rule of round 49/51 ("Redis restarted
    from an older snapshot (RDB) ... keeps marks older than what was published ... a starting
    replica neither catches up nor takes over a slot due before Redis's start") is applied by
    a *starting* replica only.

    Sequence (two healthy replicas A and B, every replica asks at once; ``e`` every 5 s; Redis
    with RDB): both ask about each slot of ``e``; Redis saves a snapshot at 10:00:06 (mark
    10:00:05); at 10:00:10 A claims and publishes 10:00:10, and Redis crashes right then,
    before B's tick asks about it: B's claim meets the outage (its tick publishes nothing and
    puts the slot back, asked again a second later). Redis comes back at once from its last
    snapshot (mark 10:00:05). At 10:00:11 B asks about 10:00:10 again (A's next claim, the
    only one that would write A's known mark 10:00:10 back, is at 10:00:15).

    Expected: B gets ``claimed`` (or the slot is reported skipped), as a replica starting now
    would (it would report 10:00:10 ``unknown``). What happens: B's known mark is 10:00:05 (it
    never saw 10:00:10 claimed), the restored mark is 10:00:05: B wins 10:00:10, published by
    A and again by B. Where: backends/lua.py ``_CLAIM_BODY`` (the start-time bound
    ``data_lost_at`` is applied only when ``hwm`` is missing; a present, older mark is raised
    only to the caller's known mark), and scheduler.py (a running replica's retry never
    applies startup_catchup.py ``_unknown_left_out``).
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        client = redis.Redis.from_url(server.url)
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5)}}
        a = replica(beats, server, schedule, "replica-a")
        b = replica(beats, server, schedule, "replica-b")

        def both(until: datetime) -> None:
            tick_until(clock, [a, b], until, 0.25)

        both(t(6))
        server.save("snapshot.rdb")  # the save point
        both(t(10))
        a.scheduler.tick()  # A claims and publishes 10:00:10 ...
        assert t(10) in slots_of(a) and t(10) not in slots_of(b)
        server.crash()  # ... and Redis crashes right then
        b.scheduler.tick()  # B's claim of 10:00:10 meets the outage: the slot is put back
        assert t(10) not in slots_of(b)
        server.start_from("snapshot.rdb")  # back at once, from its snapshot
        assert int(client.hget(KEYS.state("e"), "hwm") or 0) == int(t(5).timestamp() * 1e6)
        clock.advance(1)
        both(t(16))

    twice = slots_of(a) & slots_of(b)
    assert not twice, f"published by A and again by B: {hms(twice)}"
    assert t(15) in slots_of(a) | slots_of(b), "the slots after the restart still fire"


# -- 2. a running replica's takeover retry, after a restart from an older snapshot --------------


class BrokerDownOnce(RecordingPublisher):
    """Records what it publishes; the broker cannot be reached at the next ``prepare`` when
    ``down`` is set (the claims stay this replica's, unfenced, asked again a second later)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def prepare(self) -> None:
        if self.down:
            self.down = False
            raise ConnectionError("broker unreachable for a moment")


def test_a_running_replicas_takeover_retry_republishes_a_slot_after_an_rdb_restore(
    beats: list[Any], tmp_path: Path
) -> None:
    """Promise: docs/guarantees.md promise 1 (at most once) and the failure row "Redis loses
    data": "No duplicates"; round 51's rule "a starting replica does not take over an unsent
    claim of an older snapshot either (reported unknown)". A replica that keeps running and
    holds a takeover retry (it got ``pending``) is not starting: nothing applies the rule to it.

    Sequence (replicas A and C ask at once; ``e`` every 5 s; claim lease 2 s; Redis with RDB):
    at 10:00:10 A wins 10:00:10 but cannot reach the broker for a moment (its claim stays
    pending, unfenced; it asks again a second later). C asks about 10:00:10 and gets
    ``pending``: it queues a takeover retry for the lease's end. Redis's save point falls now
    (the snapshot holds A's pending claim). At 10:00:11 A's broker is back: A fences, publishes
    and records 10:00:10 sent. Redis crashes and comes back from the snapshot (10:00:10 is again
    a pending claim of A's, never fenced). At 10:00:12 (the lease is out on Redis's clock) C's
    takeover retry asks about 10:00:10.

    Expected: C gets ``claimed`` / the slot is reported skipped (``unknown``), as a starting
    replica would report it. What happens: the claim script finds A's unfenced claim, lease
    out, and answers ``taken_over``: C publishes 10:00:10 a second time (same task id). Where:
    backends/lua.py ``_CLAIM_BODY`` (the takeover branch trusts a pending claim a snapshot
    brought back; no restart check) and pipeline.py / scheduler.py (a running replica's
    takeover retries never go through startup_catchup.py ``_unknown_left_out``).
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        client = redis.Redis.from_url(server.url)
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5)}}
        conf = {"fork_scheduler_claim_lease": 2}
        publisher = BrokerDownOnce()
        a = replica(beats, server, schedule, "replica-a", publisher=publisher, **conf)
        c = replica(beats, server, schedule, "replica-c", **conf)

        def both(until: datetime) -> None:
            tick_until(clock, [a, c], until, 0.25)

        both(t(10))
        publisher.down = True
        a.scheduler.tick()  # A wins 10:00:10; the broker is away: pending, unfenced
        c.scheduler.tick()  # C: pending (a takeover retry at the lease's end)
        assert t(10) not in slots_of(a) | slots_of(c)
        assert client.hexists(KEYS.pending("e"), str(int(t(10).timestamp() * 1e6)))
        server.save("snapshot.rdb")  # the save point: A's claim is pending in the snapshot
        both(t(11.5))  # A's broker is back: A publishes 10:00:10 and records it sent
        assert t(10) in slots_of(a) and t(10) not in slots_of(c)

        server.crash()  # Redis crashes, back from the snapshot
        server.start_from("snapshot.rdb")
        assert client.hexists(KEYS.pending("e"), str(int(t(10).timestamp() * 1e6)))
        both(t(16))  # the claim lease runs out: C's takeover retry asks

    twice = slots_of(a) & slots_of(c)
    assert not twice, f"published by A and again by C: {hms(twice)}"
    assert t(15) in slots_of(a) | slots_of(c), "the slots after the restart still fire"


# -- 3. a non-owner's parked chains released after a restore of the owners' progress records ----


@pytest.mark.parametrize("cut", [0.05, 0.15, 0.25])
def test_a_non_owner_wins_again_after_an_rdb_restore_the_slot_its_owner_just_published(
    beats: list[Any], tmp_path: Path, cut: float
) -> None:
    """Promise: docs/guarantees.md promise 1 and the failure row "Redis loses data": "No
    duplicates" ("Every replica remembers the latest slot Redis confirmed for each entry and
    sends it with each claim"); ownership.py: "The claim script stays the only judge of who
    publishes: ownership decides who asks first, so exactly-once never depends on it".

    Sequence (two healthy replicas ticking every 0.1 s, ``fork_scheduler_owner_grace`` 1 s,
    the default, so each entry has an owner and the other replica parks it; ten entries every
    1 s; Redis with RDB): Redis saves a snapshot at 10:00:04; both go on. At 10:00:12 each
    owner publishes its entries' slot 10:00:12; Redis crashes ``cut`` s later (no other fault,
    nobody stalls) and comes back at once from the snapshot (marks 10:00:04, and the
    replicas' progress records of 10:00:04).

    What happens: the restored progress record of the other replica is 8 s old: each replica
    takes the other for dead and asks about its entries from the first slot after what it
    last trusted of its record, 10:00:12 (the record it read lags the owner by up to a few
    hundred ms). Its known mark of an entry it never asked about (parked) is no help: the
    claim finds the snapshot's mark, present and older, and wins 10:00:12, which the owner
    published before the crash. With ``owner_grace=0`` (every replica asks at once) the same
    cut loses nothing. Expected: no (entry, slot) published twice. Where: backends/lua.py
    ``_CLAIM_BODY`` (a present, older mark is only raised to the caller's known mark; the
    start-time bound applies to a missing mark only) with ownership.py / parking.py (a
    non-owner's known marks lag by design, and a restored stale progress record releases its
    parked chains at once).
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        schedule = {f"e{i}": {"task": TASK, "schedule": timedelta(seconds=1)} for i in range(10)}
        conf = {"fork_scheduler_owner_grace": 1}
        a = replica(beats, server, schedule, "replica-a", **conf)
        b = replica(beats, server, schedule, "replica-b", **conf)

        def both(until: datetime) -> None:
            tick_until(clock, [a, b], until, 0.1)

        both(t(4))
        server.save("snapshot.rdb")  # the save point
        both(t(12 + cut))
        occurrences = a.publisher.occurrences + b.publisher.occurrences
        before = Counter((o.entry, o.slot) for o in occurrences)
        assert all((f"e{i}", t(12)) in before for i in range(10))
        server.crash()  # Redis crashes, back from the snapshot
        server.start_from("snapshot.rdb")
        both(t(16))

    occurrences = a.publisher.occurrences + b.publisher.occurrences
    counts = Counter((o.entry, o.slot) for o in occurrences)
    twice = sorted(f"{name}@{slot.time()}" for (name, slot), n in counts.items() if n > 1)
    assert twice == [], f"published twice: {twice}"
    assert all((f"e{i}", t(15)) in counts for i in range(10)), "later slots still fire"


# -- 4. a backfill after a restart from an older snapshot ---------------------------------------


def test_a_backfill_after_an_rdb_restore_does_not_send_a_slot_published_before_the_crash(
    beats: list[Any], tmp_path: Path
) -> None:
    """Promise: docs/manager.md, Backfill: "publishes only the slots that were never
    published"; a slot whose history may be lost is ``skipped:unknown``. Found while fixing
    round 53: after Redis came back from a snapshot, the history items of the slots published
    after it are gone, and once the scheduler's mark passes them, nothing said they were sent.

    Sequence (``e`` every 5 s): replica A publishes; snapshot at 10:00:06; A publishes 10:00:10;
    at 10:00:12 the node crashes (A with it) and Redis comes back from the snapshot; replica B
    starts (it never saw 10:00:10: no mark of its own to write back) and publishes 10:00:15 and
    10:00:20, so the mark is past 10:00:10 again. Then ``backfill e 10:00:00 .. 10:00:20``.
    Expected: 10:00:10 is not sent again (``skipped:unknown``); without the rule it was sent."""
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5)}}
        a = replica(beats, server, schedule, "replica-a")
        a.run_until(t(6))
        server.save("snapshot.rdb")
        a.run_until(t(12))
        server.crash()  # A dies with the node: it is never ticked again
        server.start_from("snapshot.rdb")
        b = replica(beats, server, schedule, "replica-b")
        b.run_until(t(21))
        assert t(10) in slots_of(a) and {t(15), t(20)} <= slots_of(b)
        assert t(10) not in slots_of(b)
        results = Manager(a.scheduler.app, clock=clock).backfill("e", t(0), t(20), rate=1000)

    by_slot = {r.slot: r.outcome for r in results}
    assert by_slot[t(10)] == "skipped:unknown", by_slot
