"""Adversary round 18: parked chains (commit aca53f2, ``parking.ParkedChains``).

With ``fork_scheduler_owner_grace`` > 0 a non-owner parks another replica's entry once the
owner's progress record covers a slot, and releases it when the owner stops keeping up. The
replicas here tick **event-driven**: each one is ticked again when the sleep its previous tick
returned runs out (as beat does), not on a fixed fine grid, so the wake-up cadence of a replica
with parked chains (``Scheduler._seconds_to_next_wakeup``) matters.

The first test FAILS today; the others are probes (they pass) for what was checked and found
sound.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from replica_helpers import START, fired, make_app, schedulers

from celery_fork_scheduler import Manager, Scheduler, every
from celery_fork_scheduler.ownership import owner_of
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

START_AT = datetime.fromisoformat(START).replace(microsecond=0)
IDS = ["replica-a", "replica-b"]
ENTRIES = {f"e{i:02}": {"task": "t", "schedule": every(1).seconds} for i in range(12)}


def drive(
    replicas: list[Scheduler],
    clock: FakeClock,
    seconds: float,
    *,
    alive: Callable[[Scheduler, datetime], bool] | None = None,
) -> None:
    """Tick each replica when the sleep its last tick returned has run out, for ``seconds``;
    a replica for which ``alive(replica, instant)`` is False at its next tick is killed (never
    ticked again, nothing closed: its record stays until it ages out)."""
    end = clock() + timedelta(seconds=seconds)
    wake = {id(r): clock() for r in replicas}
    while True:
        ready = [r for r in replicas if alive is None or alive(r, wake[id(r)])]
        if not ready:
            return
        replica = min(ready, key=lambda r: wake[id(r)])
        at = wake[id(replica)]
        if at > end:
            return
        if at > clock():
            clock.set(at)
        sleep = replica.tick()
        wake[id(replica)] = clock() + timedelta(seconds=max(sleep, 0.01))


def owned_by(owner: str, prefix: str) -> str:
    """An entry name that rendezvous hashing gives to ``owner`` among :data:`IDS`."""
    return next(f"{prefix}-{i}" for i in range(1000) if owner_of(f"{prefix}-{i}", IDS) == owner)


def once_each(counts: Any, names: Any, first: datetime, last: datetime) -> tuple[list, list]:
    """(missing, repeated) every-second slots of ``names`` from ``first`` to ``last``."""
    missing, repeated = [], []
    for name in names:
        slot = first
        while slot <= last:
            n = counts.get((name, slot.isoformat()), 0)
            (missing if n == 0 else repeated if n > 1 else []).append((name, slot.isoformat()))
            slot += timedelta(seconds=1)
    return missing, repeated


class TimedPublisher(RecordingPublisher):
    """Records, with each occurrence, the fake clock's time of its publish."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: dict[tuple[str, datetime], datetime] = {}

    def publish(self, occurrence: Occurrence) -> None:
        self.at[(occurrence.entry, occurrence.slot)] = self.clock()
        super().publish(occurrence)


# -- failing ------------------------------------------------------------------------------------


def test_a_dead_owners_slot_fires_half_a_grace_later_than_the_grace_once_its_entry_was_parked(
    redis_url: str,
) -> None:
    """Promise (docs/settings.md#fork_scheduler_owner_grace): "the entries of a replica that
    died or stalls fire up to `owner_grace` late until its record is 5 s old"; guarantees:
    "A dead or slow owner costs a grace, never a slot"; parking.py: "a dead owner still costs a
    grace".

    Sequence (grace 1 s, defaults otherwise, both replicas ticking when their sleep runs out):
    ``p`` (every second at .000) and ``q`` (every second at .050) are owned by replica-a;
    ``r`` (every second at .000) by replica-b. replica-b parks p and q under replica-a. At
    10:00:07.010 replica-a is killed, after its 10:00:07.000 tick (record: until 07.000) and
    before q's slot 10:00:07.050.

    Observed: replica-b ticks at 08.000 (its own slot; 08.000 - 07.000 is not more than the
    grace, so replica-a still "keeps up"), then sleeps grace/2 and releases replica-a's chains
    at 08.500. q's slot 07.050 is by then older than the grace and is claimed at once: it
    fires 1.45 s late, not 1 s. Before parking, the same slot was deferred to exactly
    slot + grace. The release is only noticed at a tick, and a replica with parked chains
    wakes every grace/2 (``_seconds_to_next_wakeup``), so a slot just after the owner's last
    record waits up to 1.5 x grace (+ READ_INTERVAL): up to 90 s with the 60 s maximum grace.
    """
    p, q, r = owned_by("replica-a", "p"), owned_by("replica-a", "q"), owned_by("replica-b", "r")
    schedule = {
        p: {"task": "t", "schedule": every(1).seconds},
        q: {"task": "t", "schedule": every(1).seconds.offset(milliseconds=50)},
        r: {"task": "t", "schedule": every(1).seconds},
    }
    clock = FakeClock(START)
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        survivor = TimedPublisher(clock)
        a = make(clock, "replica-a", beat_schedule=schedule)
        b = make(clock, "replica-b", beat_schedule=schedule, publisher=survivor)
        drive([a, b], clock, 5.7)
        assert set(b.parked._by_owner.get("replica-a", {})) == {p, q}
        killed = START_AT + timedelta(seconds=7.01)
        drive([a, b], clock, 6, alive=lambda replica, at: replica is b or at < killed)
    everything = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
    assert max(everything.values()) == 1
    slot = START_AT + timedelta(seconds=7.05)
    assert (q, slot.isoformat()) in everything  # never a slot: holds
    late = (survivor.at[(q, slot)] - slot).total_seconds()
    assert late <= 1.0 + 0.05, f"{q} slot {slot.time()} published {late} s late (grace 1 s)"


# -- probes (pass) ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 0.001, 0.3, 0.5, 0.999])
def test_probe_owner_killed_around_a_slot_boundary_costs_no_slot(
    redis_url: str, offset: float
) -> None:
    """Probe: owner killed at/just after a slot boundary while its entries are parked on the
    other replica: every slot once."""
    clock = FakeClock(START)
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        a = make(clock, "replica-a", beat_schedule=ENTRIES)
        b = make(clock, "replica-b", beat_schedule=ENTRIES)
        drive([a, b], clock, 6)
        assert len(b.parked) > 0
        killed = START_AT + timedelta(seconds=7 + offset)
        drive([a, b], clock, 12, alive=lambda replica, at: replica is b or at < killed)
    counts = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
    first, last = START_AT + timedelta(seconds=3), START_AT + timedelta(seconds=16)
    assert once_each(counts, ENTRIES, first, last) == ([], [])


@pytest.mark.parametrize("period", [0.7, 0.95, 1.05, 1.3, 2.5, 4.0])
def test_probe_slow_owner_flapping_park_and_release_costs_no_slot(
    redis_url: str, period: float
) -> None:
    """Probe: replica-a ticks only every ``period`` s (its until lags under/over the grace;
    replica-b parks and releases its chains over and over): every slot once."""
    clock = FakeClock(START)
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        a = make(clock, "replica-a", beat_schedule=ENTRIES)
        b = make(clock, "replica-b", beat_schedule=ENTRIES)
        drive([a, b], clock, 4)
        end = START_AT + timedelta(seconds=30)
        wake = {"a": clock(), "b": clock()}
        while min(wake.values()) <= end:
            who = min(wake, key=wake.__getitem__)
            clock.set(max(wake[who], clock()))
            sleep = (a if who == "a" else b).tick()
            wake[who] = clock() + timedelta(seconds=period if who == "a" else max(sleep, 0.01))
    counts = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
    first, last = START_AT + timedelta(seconds=2), START_AT + timedelta(seconds=27)
    assert once_each(counts, ENTRIES, first, last) == ([], [])


@pytest.mark.parametrize("freeze", [1.2, 2.0, 4.9, 5.5, 8.0])
def test_probe_owner_frozen_then_resuming_three_times_costs_no_slot(
    redis_url: str, freeze: float
) -> None:
    """Probe: the owner stops ticking for ``freeze`` s (under/over the 5 s lease) and resumes,
    three times: every slot once."""
    clock = FakeClock(START)
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        a = make(clock, "replica-a", beat_schedule=ENTRIES)
        b = make(clock, "replica-b", beat_schedule=ENTRIES)
        drive([a, b], clock, 4)
        for _ in range(3):
            f0 = clock() + timedelta(seconds=0.37)
            f1 = f0 + timedelta(seconds=freeze)

            def alive(rep: Scheduler, at: datetime, f0: datetime = f0, f1: datetime = f1) -> bool:
                return rep is b or not f0 <= at < f1

            drive([a, b], clock, freeze + 4, alive=alive)
    counts = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
    last = clock().replace(microsecond=0) - timedelta(seconds=3)
    assert once_each(counts, ENTRIES, START_AT + timedelta(seconds=2), last) == ([], [])


def test_probe_a_third_replica_joining_and_dying_repeatedly_costs_no_slot(redis_url: str) -> None:
    """Probe: a third replica joins (view change: everything released) and is killed
    (released again when it stops keeping up, then on its lease), four times."""
    clock = FakeClock(START)
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        a = make(clock, "replica-a", beat_schedule=ENTRIES)
        b = make(clock, "replica-b", beat_schedule=ENTRIES)
        drive([a, b], clock, 4)
        thirds = []
        for k in range(4):
            c = make(clock, f"replica-c{k}", beat_schedule=ENTRIES)
            thirds.append(c)
            drive([a, b, c], clock, 3.3)
            drive([a, b, c], clock, 7.1, alive=lambda rep, at, c=c: rep is not c)
    counts = fired(a.publisher, b.publisher, *[c.publisher for c in thirds])  # type: ignore[arg-type]
    last = clock().replace(microsecond=0) - timedelta(seconds=3)
    assert once_each(counts, ENTRIES, START_AT + timedelta(seconds=2), last) == ([], [])


@pytest.mark.parametrize(
    "change", [{"schedule": 2}, {"schedule": "* * * * *"}, {"jitter": 0.8}, {"schedule": 0.5}]
)
@pytest.mark.parametrize("kill_after", [0.05, 1.5])
def test_probe_a_parked_runtime_entry_changed_then_its_owner_dies_follows_the_change(
    redis_url: str, change: dict[str, Any], kill_after: float
) -> None:
    """Probe: a runtime entry parked on replica-b is changed (every 1 s -> 2 s, a cron, jitter,
    0.5 s); its owner dies ``kill_after`` s later; replica-b publishes exactly the new
    definition's slots (Manager.next_runs), once."""
    clock = FakeClock(START)
    name = owned_by("replica-a", "job")
    with schedulers(
        redis_url, fork_scheduler_owner_grace=1, fork_scheduler_min_interval=0.1
    ) as make:
        a = make(clock, "replica-a", beat_schedule=ENTRIES)
        b = make(clock, "replica-b", beat_schedule=ENTRIES)
        manager = Manager(make_app(redis_url, fork_scheduler_min_interval=0.1), clock=clock)
        manager.add(name, "t", 1)
        drive([a, b], clock, 5)
        assert name in b.parked._by_owner.get("replica-a", {})
        manager.update(name, **change)
        changed = clock()
        killed = clock() + timedelta(seconds=kill_after)
        drive([a, b], clock, 70, alive=lambda replica, at: replica is b or at < killed)
        slots = sorted(
            o.slot for o in a.publisher.occurrences + b.publisher.occurrences if o.entry == name
        )
        after = changed + timedelta(seconds=2)
        expected = [
            s
            for s in manager.next_runs(name, 200, after=after)
            if s <= clock() - timedelta(seconds=3)
        ]
    assert len(slots) == len(set(slots))
    assert [s for s in slots if s > after][: len(expected)] == expected


def test_probe_a_parked_entry_paused_owner_dies_resumed_fires_again(redis_url: str) -> None:
    """Probe: pause (a Redis state, no version change) of a parked runtime entry, owner killed,
    resumed: replica-b publishes its slots after the resume."""
    clock = FakeClock(START)
    name = owned_by("replica-a", "job")
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        a = make(clock, "replica-a", beat_schedule=ENTRIES)
        b = make(clock, "replica-b", beat_schedule=ENTRIES)
        manager = Manager(make_app(redis_url), clock=clock)
        manager.add(name, "t", 1)
        drive([a, b], clock, 5)
        assert name in b.parked._by_owner.get("replica-a", {})
        manager.pause(name)
        drive([a, b], clock, 2)
        killed = clock() + timedelta(seconds=0.3)
        drive([a, b], clock, 8, alive=lambda replica, at: replica is b or at < killed)
        manager.resume(name)
        resumed = clock()
        drive([b], clock, 6)
    slots = [o.slot for o in b.publisher.occurrences if o.entry == name and o.slot > resumed]
    assert len(slots) >= 5


def test_probe_hourly_entries_parked_far_before_their_slot_fire_after_the_owner_died(
    redis_url: str,
) -> None:
    """Probe: hourly entries (catchup "all") parked after 11:00 with a trusted ``until`` far
    before the next slot; the owner dies at 11:00:20; 12:00 fires once, on replica-b."""
    clock = FakeClock("2026-03-02T10:59:50+00:00")
    names = [owned_by("replica-a", f"hr{i}") for i in range(3)]
    schedule = {n: {"task": "t", "schedule": "0 * * * *", "catchup": "all"} for n in names}
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        a = make(clock, "replica-a", beat_schedule=schedule)
        b = make(clock, "replica-b", beat_schedule=schedule)
        drive([a, b], clock, 30)
        assert set(names) == set(b.parked._by_owner.get("replica-a", {}))
        killed = clock()
        drive([a, b], clock, 3600, alive=lambda replica, at: replica is b or at < killed)
    counts = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
    for n in names:
        slots = sorted(slot for entry, slot in counts if entry == n)
        assert slots == ["2026-03-02T11:00:00+00:00", "2026-03-02T12:00:00+00:00"], slots
        assert max(c for (entry, _), c in counts.items() if entry == n) == 1


def test_probe_replicas_with_different_beat_schedules_park_nothing(redis_url: str) -> None:
    """Probe: views differ (one more static entry on one replica): nothing is parked, every
    slot once."""
    clock = FakeClock(START)
    extra = {**ENTRIES, "extra": {"task": "t", "schedule": every(1).seconds}}
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        a = make(clock, "replica-a", beat_schedule=ENTRIES)
        b = make(clock, "replica-b", beat_schedule=extra)
        drive([a, b], clock, 8)
        assert len(a.parked) == len(b.parked) == 0
    counts = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
    last = START_AT + timedelta(seconds=7)
    assert once_each(counts, extra, START_AT + timedelta(seconds=2), last) == ([], [])
