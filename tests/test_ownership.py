"""Replicas divide the entries (issue 20): each asks first about the slots of the entries it
owns; another asks only when the owner has not handled a slot within the grace. Exactly-once
stays with the claim script: ownership only changes who asks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from replica_helpers import START, fired, schedulers, tick_for

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.ownership import owner_of
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

START_AT = datetime.fromisoformat(START).replace(microsecond=0)
ENTRIES = {f"e{i:02}": {"task": "t", "schedule": every(1).seconds} for i in range(30)}
DIVIDED = {"fork_scheduler_owner_grace": 1}


def test_rendezvous_hashing_divides_entries_evenly_and_moves_only_a_dead_replicas_share() -> None:
    names = [f"entry-{i}" for i in range(3000)]
    three = Counter(owner_of(name, ["a", "b", "c"]) for name in names)
    assert all(800 <= count <= 1200 for count in three.values()), three
    before = {name: owner_of(name, ["a", "b", "c"]) for name in names}
    # "c" left: only its entries move; a's and b's stay where they were.
    assert all(owner_of(n, ["a", "b"]) == before[n] for n in names if before[n] != "c")


class Counting:
    """Counts the claims each replica asks Redis for."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.asked = 0
        real = scheduler.backend.claim

        def claim(claims: Any) -> Any:
            self.asked += len(claims)
            return real(claims)

        scheduler.backend.claim = claim  # type: ignore[method-assign]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url, **DIVIDED) as make:
        yield lambda clock, rid, **options: make(
            clock, rid, **{"beat_schedule": ENTRIES, **options}
        )


def tick_all(replicas: list[Scheduler], clock: FakeClock, seconds: float) -> None:
    tick_for(lambda: [r.tick() for r in replicas], clock, seconds, step=0.1)


def test_three_replicas_ask_about_each_slot_about_once_and_publish_it_once(
    make: Any, clock: FakeClock
) -> None:
    replicas = [make(clock, f"replica-{name}") for name in "abc"]
    counts = [Counting(r) for r in replicas]
    tick_all(replicas, clock, 3)  # the replicas see each other
    asked_before = sum(c.asked for c in counts)
    published_before = sum(fired(r.publisher).total() for r in replicas)  # type: ignore[arg-type]
    tick_all(replicas, clock, 10)
    everything = fired(*[r.publisher for r in replicas])  # type: ignore[arg-type]
    assert max(everything.values()) == 1
    published = everything.total() - published_before
    asked = sum(c.asked for c in counts) - asked_before
    assert published >= 30 * 9
    assert asked <= 1.2 * published, (asked, published)  # without division: 3x
    assert all(fired(r.publisher).total() > 0 for r in replicas)  # type: ignore[arg-type]


class TimedPublisher(RecordingPublisher):
    """Records, with each occurrence, the fake clock's time of its publish."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: dict[tuple[str, datetime], datetime] = {}

    def publish(self, occurrence: Occurrence) -> None:
        self.at[(occurrence.entry, occurrence.slot)] = self.clock()
        super().publish(occurrence)


def test_a_dead_owner_costs_its_entries_a_grace_never_a_slot(make: Any, clock: FakeClock) -> None:
    survivor_publisher = TimedPublisher(clock)
    replicas = [
        make(clock, "replica-a"),
        make(clock, "replica-b", publisher=survivor_publisher),
    ]
    tick_all(replicas, clock, 3)
    dead_at = clock()
    tick_for(replicas[1].tick, clock, 12, step=0.1)  # replica-a stopped ticking (killed)
    everything = fired(*[r.publisher for r in replicas])  # type: ignore[arg-type]
    assert max(everything.values()) == 1
    first = dead_at.replace(microsecond=0) + timedelta(seconds=1)
    for name in ENTRIES:
        for second in range(11):
            slot = first + timedelta(seconds=second)
            assert (name, slot.isoformat()) in everything, (name, slot)
    delays = [at - slot for (_, slot), at in survivor_publisher.at.items() if slot > dead_at]
    assert max(delays) > timedelta(seconds=0.9)  # the dead owner's entries waited a grace
    assert max(delays) <= timedelta(seconds=1.3)  # and no more


def test_replicas_whose_entries_differ_never_trust_each_others_progress(
    make: Any, clock: FakeClock, redis_url: str
) -> None:
    """A rolling deploy: one replica has an entry the other does not know yet. Neither skips
    on the other's word; every slot of every entry is still published once."""
    extra = {**ENTRIES, "new-entry": {"task": "t", "schedule": every(1).seconds}}
    old = make(clock, "replica-old")
    new = make(clock, "replica-new", beat_schedule=extra)
    tick_all([old, new], clock, 8)
    everything = fired(old.publisher, new.publisher)  # type: ignore[arg-type]
    assert max(everything.values()) == 1
    assert old.ownership is not None and new.ownership is not None
    assert old.ownership.view != new.ownership.view
    slots = {slot for (name, slot) in everything if name == "new-entry"}
    assert len(slots) >= 7


def test_replicas_whose_entries_differ_only_by_name_never_trust_each_others_progress(
    make: Any, clock: FakeClock
) -> None:
    """A rolling deploy renames an entry (same definition): the names decide the owners, so
    the two views differ and the renamed entry's slots are all published, once."""
    renamed = {("renamed" if name == "e00" else name): value for name, value in ENTRIES.items()}
    old = make(clock, "replica-old")
    new = make(clock, "replica-new", beat_schedule=renamed)
    tick_all([old, new], clock, 8)
    assert old.ownership is not None and new.ownership is not None
    assert old.ownership.view != new.ownership.view
    everything = fired(old.publisher, new.publisher)  # type: ignore[arg-type]
    assert max(everything.values()) == 1
    for name in ("e00", "renamed"):
        assert len({slot for (entry, slot) in everything if entry == name}) >= 7, name


def not_owned_in_queues(replica: Scheduler) -> int:
    """Items queued (now or deferred) for entries another replica owns."""
    ownership = replica.ownership
    assert ownership is not None
    items = [item for _, _, item in replica.queue._heap + replica.deferred._heap]
    return sum(1 for item in items if ownership.other_owner(item.entry.name) is not None)


def test_a_non_owner_parks_the_entries_whose_owner_keeps_up_and_handles_none_of_their_slots(
    make: Any, clock: FakeClock
) -> None:
    replicas = [make(clock, "replica-a"), make(clock, "replica-b")]
    tick_all(replicas, clock, 4)
    skipped: list[str] = []
    for replica in replicas:
        assert replica.ownership is not None and len(replica.ownership.live) == 2
        owned_elsewhere = [n for n in ENTRIES if replica.ownership.other_owner(n) is not None]
        assert 0 < len(owned_elsewhere) < len(ENTRIES)
        assert len(replica.parked) == len(owned_elsewhere)
        assert not_owned_in_queues(replica) == 0
        replica.reports.skipped_slot = lambda entry, slot, reason: skipped.append(entry)  # type: ignore[method-assign]
    tick_all(replicas, clock, 10)
    assert skipped == []  # no slot of a parked entry was even looked at
    everything = fired(*[r.publisher for r in replicas])  # type: ignore[arg-type]
    assert max(everything.values()) == 1
    first = START_AT + timedelta(seconds=5)
    for name in ENTRIES:
        for second in range(9):
            assert (name, (first + timedelta(seconds=second)).isoformat()) in everything


def test_a_view_change_releases_parked_chains_and_no_slot_is_missed_or_repeated(
    make: Any, clock: FakeClock
) -> None:
    replicas = [make(clock, "replica-a"), make(clock, "replica-b")]
    tick_all(replicas, clock, 4)
    assert all(len(r.parked) > 0 for r in replicas)
    replicas.append(make(clock, "replica-c"))  # a new live set: every entry is divided again
    tick_all(replicas, clock, 8)
    assert all(r.ownership is not None and len(r.ownership.live) == 3 for r in replicas)
    for replica in replicas:
        owned_elsewhere = [n for n in ENTRIES if replica.ownership.other_owner(n) is not None]  # type: ignore[union-attr]
        assert len(replica.parked) == len(owned_elsewhere)
    everything = fired(*[r.publisher for r in replicas])  # type: ignore[arg-type]
    assert max(everything.values()) == 1
    first = START_AT + timedelta(seconds=1)
    for name in ENTRIES:
        for second in range(11):
            assert (name, (first + timedelta(seconds=second)).isoformat()) in everything


def test_a_removed_entry_leaves_nothing_parked(make: Any, clock: FakeClock) -> None:
    replicas = [make(clock, "replica-a"), make(clock, "replica-b")]
    tick_all(replicas, clock, 4)
    replica = replicas[0]
    parked = len(replica.parked)
    name = next(n for n in ENTRIES if replica.ownership.other_owner(n) is not None)  # type: ignore[union-attr]
    replica.remove_entry(name)
    assert len(replica.parked) == parked - 1


def test_an_owner_whose_record_lands_after_its_busy_tick_keeps_its_entries_parked(
    make: Any, clock: FakeClock
) -> None:
    """The owner's record is written after its tick: an owner publishing for 0.3 s after each
    second reports "up to T" at T + 0.3, so at T + 1 + grace its record still says T. Its
    entries' next slots (T + 1) are not a grace old before T + 2: nothing is released, and
    the non-owner looks at none of their slots."""
    owner, other = make(clock, "replica-a"), make(clock, "replica-b")
    tick_all([owner, other], clock, 4)
    assert owner.ownership is not None and len(other.parked) > 0
    late: list[tuple[float, datetime, datetime]] = []
    report = owner.ownership.report

    def report_later(until: datetime, now: datetime) -> None:
        late.append((clock().timestamp() + 0.3, until, now))

    owner.ownership.report = report_later  # type: ignore[method-assign]
    skipped: list[str] = []
    other.reports.skipped_slot = lambda entry, slot, reason: skipped.append(entry)  # type: ignore[method-assign]
    end = clock() + timedelta(seconds=8)
    step = 0
    while clock() < end:
        if step % 20 == 0:  # the owner wakes each second (its entries' slots)
            owner.tick()
        step += 1
        other.tick()
        for record in [r for r in late if r[0] <= clock().timestamp()]:
            late.remove(record)
            owner.ownership._next_write = 0.0
            report(record[1], record[2])
        clock.advance(0.05)
    assert skipped == []
    parked_names = {n for n in ENTRIES if other.ownership.other_owner(n) is not None}  # type: ignore[union-attr]
    assert len(other.parked) == len(parked_names)
    everything = fired(owner.publisher, other.publisher)  # type: ignore[arg-type]
    assert max(everything.values()) == 1


def test_a_burst_of_entries_that_never_fired_is_parked_by_non_owners_at_its_slot(
    make: Any, clock: FakeClock
) -> None:
    """The first slot of entries that never fired (a burst on the minute after start-up): a
    replica parks another's entries at once when their owner keeps up, instead of deferring
    each slot by the grace and then checking it (which cost three replicas more CPU than one
    in a burst); the owner's slots are still published once each."""
    minutely = {f"m{i:02}": {"task": "t", "schedule": "* * * * *"} for i in range(30)}
    replicas = [make(clock, f"replica-{name}", beat_schedule=minutely) for name in "abc"]
    counts = [Counting(r) for r in replicas]
    tick_all(replicas, clock, 3)  # the replicas see each other; no slot due yet
    minute = (clock() + timedelta(minutes=1)).replace(second=0, microsecond=0)
    wait = (minute - clock()).total_seconds() - 0.3
    tick_for(lambda: [r.tick() for r in replicas], clock, wait, step=0.5)  # records stay fresh
    clock.advance((minute - clock()).total_seconds() + 0.05)
    for replica in replicas:
        replica.tick()
    for replica in replicas:
        assert replica.ownership is not None
        foreign = [n for n in minutely if replica.ownership.other_owner(n) is not None]
        assert 0 < len(foreign) < len(minutely), replica.ownership.live
        assert not_owned_in_queues(replica) == 0, "a slot of another's entry was deferred"
        assert len(replica.parked) == len(foreign)
    tick_all(replicas, clock, 5)
    everything = fired(*[r.publisher for r in replicas])  # type: ignore[arg-type]
    assert sorted(everything) == sorted((name, minute.isoformat()) for name in minutely)
    assert max(everything.values()) == 1
    assert sum(c.asked for c in counts) == len(minutely), "each slot asked about once"


class WarmingPublisher(RecordingPublisher):
    """Records the entries whose template it was asked to make ahead (``warm``)."""

    def __init__(self) -> None:
        super().__init__()
        self.warmed: list[str] = []

    def warm(self, occurrence: Occurrence) -> None:
        self.warmed.append(occurrence.entry)


def test_a_replica_makes_templates_ahead_only_for_the_entries_it_owns(
    make: Any, clock: FakeClock
) -> None:
    """In idle time a replica makes the message templates of its own entries only: another's
    entry gets its template at its first slot here, if its owner ever fails. A replica that
    starts alone owns (and warms) them all."""
    minutely = {f"m{i:02}": {"task": "t", "schedule": "* * * * *"} for i in range(30)}
    publishers = [WarmingPublisher() for _ in "abc"]
    replicas = [
        make(clock, f"replica-{name}", beat_schedule=minutely, publisher=publisher)
        for name, publisher in zip("abc", publishers, strict=True)
    ]
    tick_all(replicas, clock, 3)
    last = replicas[-1]
    assert last.ownership is not None and len(last.ownership.live) == 3
    own = sorted(n for n in minutely if last.ownership.other_owner(n) is None)
    assert 0 < len(own) < len(minutely)
    assert sorted(publishers[-1].warmed) == own
    assert sorted(publishers[0].warmed) == sorted(minutely), "alone at its first tick"
