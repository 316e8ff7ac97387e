"""Several Scheduler instances on one real Redis, driven by one fake clock.

The slot maths run on the fake clock; claims, leases and Redis TIME are real.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery

from celery_fork_scheduler import every, signals
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

ENTRIES = {f"e{i:02}": {"task": "t", "schedule": every(1).seconds} for i in range(30)}


def make_app(redis_url: str, **conf: Any) -> Celery:
    return replica_helpers.make_app(redis_url, conf.pop("beat_schedule", ENTRIES), **conf)


class Replica:
    """One scheduler with its own backend connection and publisher."""

    def __init__(
        self, redis_url: str, clock: FakeClock, publisher: Any = None, **conf: Any
    ) -> None:
        app = make_app(redis_url, **conf)
        self.monotonic = 0.0
        self.publisher = publisher or RecordingPublisher()
        # Real replicas differ by pid; these share one process.
        self.scheduler = replica_helpers.make_scheduler(
            redis_url,
            clock,
            app=app,
            publisher=self.publisher,
            replica_id=f"test-replica-{id(self)}",
            monotonic=lambda: self.monotonic,
        )


@pytest.fixture
def replicas(redis_url: str, clock: FakeClock) -> Iterator[list[Replica]]:
    made = [Replica(redis_url, clock) for _ in range(3)]
    yield made
    for replica in made:
        replica.scheduler.close()


def all_fires(replicas: list[Replica]) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (occurrence.entry, occurrence.slot.isoformat())
        for replica in replicas
        for occurrence in replica.publisher.occurrences
    )


def test_three_replicas_ticking_together_publish_each_slot_exactly_once(
    replicas: list[Replica], clock: FakeClock
) -> None:
    for step in range(40 * 4):
        for index in range(3):
            replicas[(index + step) % 3].scheduler.tick()
        clock.advance(0.25)
    fires = all_fires(replicas)
    assert max(fires.values()) == 1
    expected = {
        (name, f"2026-03-02T10:00:{second:02}+00:00") for name in ENTRIES for second in range(1, 40)
    }
    assert expected <= set(fires)
    # Every replica took part: the work is shared, not pinned to one leader.
    assert all(replica.publisher.occurrences for replica in replicas)


class Killed(BaseException):
    """What SIGKILL does to a replica at one point of its tick: nothing after it runs."""


def kill_at_fence(replica: Replica) -> None:
    """Make ``replica`` die right after winning its claims, before it fences any of them."""

    def die(claims: object) -> list[bool]:
        raise Killed

    replica.scheduler.backend.begin_publish = die


def tick_until(
    replica: Replica, clock: FakeClock, done: Callable[[], bool], seconds: float = 15
) -> None:
    """Tick ``replica`` in real time (leases run on Redis TIME) until ``done()`` or timeout."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
        clock.advance(0.05)
        replica.scheduler.tick()


@contextlib.contextmanager
def skips(wanted: str) -> Iterator[list[tuple[str, str]]]:
    """Collect ``(entry, slot)`` of the ``entry_skipped`` signals whose reason is ``wanted``."""
    seen: list[tuple[str, str]] = []

    def record(sender: object, entry: str, slot: Any, reason: str, **_: object) -> None:
        if reason == wanted:
            seen.append((entry, slot.isoformat()))

    signals.entry_skipped.connect(record, weak=False)
    try:
        yield seen
    finally:
        signals.entry_skipped.disconnect(record)


FIRST_SLOT = "2026-03-02T10:00:01+00:00"


def first_slot_fires(replica: Replica) -> list[str]:
    return sorted(
        o.entry for o in replica.publisher.occurrences if o.slot.isoformat() == FIRST_SLOT
    )


def test_a_replica_stalled_before_its_fence_loses_its_claims_and_publishes_none_of_them(
    redis_url: str, clock: FakeClock
) -> None:
    lease = {"fork_scheduler_claim_lease": 0.5}
    stalled = Replica(redis_url, clock, **lease)
    other = Replica(redis_url, clock, **lease)
    real_fence = stalled.scheduler.backend.begin_publish

    def stall_then_fence(claims: Any) -> list[bool]:
        # Paused (SIGSTOP) between winning and fencing: the other replica works meanwhile.
        tick_until(other, clock, lambda: len(first_slot_fires(other)) == 30)
        return real_fence(claims)

    stalled.scheduler.backend.begin_publish = stall_then_fence
    try:
        with skips("claimed") as lost:
            clock.advance(1)
            stalled.scheduler.tick()
        assert first_slot_fires(other) == sorted(ENTRIES)  # taken over after the lease
        assert first_slot_fires(stalled) == []  # the fence refused every one of them
        assert sorted(entry for entry, slot in lost if slot == FIRST_SLOT) == sorted(ENTRIES)
        assert max(all_fires([stalled, other]).values()) == 1
    finally:
        stalled.scheduler.close()
        other.scheduler.close()


def test_a_replica_stalled_inside_its_publish_keeps_its_fenced_claims(
    redis_url: str, clock: FakeClock
) -> None:
    lease = {"fork_scheduler_claim_lease": 0.5}
    other = Replica(redis_url, clock, **lease)

    class StallingPublisher(RecordingPublisher):
        """The first publish stalls (SIGSTOP, a hung broker) while the other replica ticks."""

        stalled = False

        def publish(self, occurrence: Occurrence) -> None:
            if not self.stalled:
                self.stalled = True
                with skips("in_flight") as in_flight:
                    tick_until(other, clock, lambda: len(in_flight) == 30)
                assert len(in_flight) == 30, "the other replica never saw the fenced claims"
            super().publish(occurrence)

    stalled = Replica(redis_url, clock, publisher=StallingPublisher(), **lease)
    try:
        clock.advance(1)
        stalled.scheduler.tick()
        assert first_slot_fires(other) == []
        assert first_slot_fires(stalled) == sorted(ENTRIES)
        assert max(all_fires([stalled, other]).values()) == 1
    finally:
        stalled.scheduler.close()
        other.scheduler.close()


def test_a_slot_claimed_by_a_replica_killed_before_its_fence_is_published_once_by_another(
    redis_url: str, clock: FakeClock
) -> None:
    lease = {"fork_scheduler_claim_lease": 0.5}
    dead = Replica(redis_url, clock, **lease)
    kill_at_fence(dead)
    survivor = Replica(redis_url, clock, **lease)
    try:
        clock.advance(1)
        with pytest.raises(Killed):
            dead.scheduler.tick()
        survivor.scheduler.tick()
        assert survivor.publisher.occurrences == []  # pending under the dead one's lease
        tick_until(survivor, clock, lambda: len(first_slot_fires(survivor)) == 30)
        taken_over = [o for o in survivor.publisher.occurrences if o.slot.isoformat() == FIRST_SLOT]
        assert sorted(o.entry for o in taken_over) == sorted(ENTRIES)
        assert all(o.task_id == task_id_for(o.entry, o.slot) for o in taken_over)
        assert max(all_fires([dead, survivor]).values()) == 1
    finally:
        dead.scheduler.close()
        survivor.scheduler.close()


def test_a_slot_whose_publisher_died_after_its_fence_is_reported_in_flight_not_sent_again(
    redis_url: str, clock: FakeClock
) -> None:
    class DyingPublisher(RecordingPublisher):
        def publish(self, occurrence: Occurrence) -> None:
            raise Killed  # whether the message left is unknown

    lease = {"fork_scheduler_claim_lease": 0.5}
    dead = Replica(redis_url, clock, publisher=DyingPublisher(), **lease)
    survivor = Replica(redis_url, clock, **lease)
    try:
        with skips("in_flight") as in_flight:
            clock.advance(1)
            with pytest.raises(Killed):
                dead.scheduler.tick()
            tick_until(survivor, clock, lambda: len(in_flight) >= 30)
        assert sorted(entry for entry, slot in in_flight if slot == FIRST_SLOT) == sorted(ENTRIES)
        assert first_slot_fires(survivor) == []
    finally:
        dead.scheduler.close()
        survivor.scheduler.close()


def test_a_failed_publish_is_retried_by_its_own_replica_and_sent_once(
    redis_url: str, clock: FakeClock
) -> None:
    class FailingOncePublisher(RecordingPublisher):
        failed = False

        def publish(self, occurrence: Occurrence) -> None:
            if not self.failed:
                self.failed = True
                raise ConnectionError("broker unreachable")
            super().publish(occurrence)

    flaky = Replica(redis_url, clock, publisher=FailingOncePublisher())
    other = Replica(redis_url, clock)
    try:
        clock.advance(1)
        flaky.scheduler.tick()  # e00 fails, e01-e29 go out
        for _ in range(8):
            clock.advance(0.25)
            other.scheduler.tick()
            flaky.scheduler.tick()
        assert first_slot_fires(flaky) == sorted(ENTRIES)
        assert first_slot_fires(other) == []
        assert max(all_fires([flaky, other]).values()) == 1
    finally:
        flaky.scheduler.close()
        other.scheduler.close()


def test_a_replica_that_joins_late_does_not_refire_slots_already_sent(
    redis_url: str, clock: FakeClock
) -> None:
    first = Replica(redis_url, clock)
    try:
        for _ in range(20):
            first.scheduler.tick()
            clock.advance(0.25)
        late = Replica(redis_url, clock)
        for _ in range(20):
            late.scheduler.tick()
            first.scheduler.tick()
            clock.advance(0.25)
        fires = all_fires([first, late])
        assert max(fires.values()) == 1
        assert {slot for _, slot in fires} == {
            f"2026-03-02T10:00:{second:02}+00:00" for second in range(1, 11)
        }
        assert late.publisher.occurrences
    finally:
        first.scheduler.close()
        late.scheduler.close()


def test_a_replica_started_after_the_only_one_died_takes_over_its_unsent_claims(
    redis_url: str, clock: FakeClock
) -> None:
    lease = {"fork_scheduler_claim_lease": 0.5}
    dead = Replica(redis_url, clock, **lease)
    kill_at_fence(dead)
    clock.advance(1)
    with pytest.raises(Killed):
        dead.scheduler.tick()
    dead.scheduler.close()

    clock.advance(0.2)
    newcomer = Replica(redis_url, clock, **lease)
    try:
        tick_until(newcomer, clock, lambda: len(first_slot_fires(newcomer)) == 30)
        assert first_slot_fires(newcomer) == sorted(ENTRIES)
    finally:
        newcomer.scheduler.close()


def test_replicas_share_a_burst_instead_of_racing_for_the_same_entries(
    redis_url: str, clock: FakeClock
) -> None:
    import threading

    class SlowPublisher(RecordingPublisher):
        """Publishing takes as long as a broker round trip would."""

        def publish(self, occurrence: Occurrence) -> None:
            time.sleep(0.0005)
            super().publish(occurrence)

    burst = {f"b{i:04}": {"task": "t", "schedule": every(1).minutes} for i in range(3000)}
    replicas = [
        Replica(redis_url, clock, publisher=SlowPublisher(), beat_schedule=burst) for _ in range(3)
    ]
    try:
        clock.advance(60)
        barrier = threading.Barrier(3)

        def tick(replica: Replica) -> None:
            barrier.wait()
            replica.scheduler.tick()

        threads = [threading.Thread(target=tick, args=(r,)) for r in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        shares = [len(r.publisher.occurrences) for r in replicas]
        assert sum(shares) == 3000
        assert max(all_fires(replicas).values()) == 1
        assert all(3000 / 6 <= share <= 3000 * 2 / 3 for share in shares), shares
    finally:
        for replica in replicas:
            replica.scheduler.close()


def test_a_replica_that_only_ever_heard_pending_still_writes_its_marks_back(
    redis_url: str, clock: FakeClock
) -> None:
    """Found by a fault test: a replica always a few ms behind the winner hears only "pending";
    if Redis then loses its data, it must still refuse the slots the winner already sent."""
    follower = Replica(redis_url, clock)

    class PublishWhileFollowerAsks(RecordingPublisher):
        """The follower asks while the winner's claims are still pending (not yet sent)."""

        def publish(self, occurrence: Occurrence) -> None:
            if occurrence.entry == "e00" and occurrence.slot.isoformat() == FIRST_SLOT:
                follower.scheduler.tick()
            super().publish(occurrence)

    winner = Replica(redis_url, clock, publisher=PublishWhileFollowerAsks())
    try:
        follower.scheduler.tick()  # starts first: Redis has no marks for it to read yet
        with skips("claimed") as decided:
            clock.advance(1)
            winner.scheduler.tick()  # the follower hears "pending" for every entry
            assert follower.publisher.occurrences == []
            assert decided == []  # nothing but "pending" so far
            for _ in range(2):  # the follower sleeps through two more slots
                clock.advance(1)
                winner.scheduler.tick()
        sent_by_winner = set(all_fires([winner]))
        redis.Redis.from_url(redis_url).flushall()  # Redis restarted without persistence
        follower.scheduler.tick()  # wakes up: the two slots it slept through are due
        assert set(all_fires([follower])) & sent_by_winner == set()
    finally:
        winner.scheduler.close()
        follower.scheduler.close()
