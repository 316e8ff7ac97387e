"""Several Scheduler instances on one real Redis, driven by one fake clock.

The slot maths run on the fake clock; claims, leases and Redis TIME are real.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

START = "2026-03-02T10:00:00.300+00:00"
ENTRIES = {f"e{i:02}": {"task": "t", "schedule": every(1).seconds} for i in range(30)}


def make_app(redis_url: str, **conf: Any) -> Celery:
    app = Celery("replicas", set_as_current=False, broker="memory://")
    app.conf.update(
        timezone="UTC",
        beat_schedule=conf.pop("beat_schedule", ENTRIES),
        result_expires=None,
        fork_scheduler_redis_url=redis_url,
        **conf,
    )
    return app


class Replica:
    """One scheduler with its own backend connection and publisher."""

    def __init__(
        self, redis_url: str, clock: FakeClock, publisher: Any = None, **conf: Any
    ) -> None:
        app = make_app(redis_url, **conf)
        self.monotonic = 0.0
        self.publisher = publisher or RecordingPublisher()
        backend = RedisBackend.from_url(redis_url, read_settings(app.conf))
        # Real replicas differ by pid; these share one process.
        backend.replica_id = f"test-replica-{id(self)}"
        self.scheduler = Scheduler(
            app,
            clock=clock,
            backend=backend,
            publisher=self.publisher,
            monotonic=lambda: self.monotonic,
            exit_on_config_error=False,
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


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


def test_a_replica_that_stalled_after_claiming_asks_again_before_publishing(
    redis_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("celery_fork_scheduler.scheduler.PUBLISH_BATCH", 1)
    lease = {"fork_scheduler_claim_lease": 1.0}

    class StallingPublisher(RecordingPublisher):
        """The first publish takes a whole lease (a SIGSTOP, a slow broker)."""

        def __init__(self, owner: Replica | None = None) -> None:
            super().__init__()
            self.owner = owner

        def publish(self, occurrence: Occurrence) -> None:
            super().publish(occurrence)
            if self.owner is not None and len(self.occurrences) == 1:
                self.owner.monotonic += 1.0

    stalling = StallingPublisher()
    first = Replica(redis_url, clock, publisher=stalling, **lease)
    stalling.owner = first
    second = Replica(redis_url, clock, **lease)
    try:
        clock.advance(1)
        first.scheduler.tick()  # claims all 30, publishes 1, then notices the stall
        assert len(first.publisher.occurrences) == 1
        second.scheduler.tick()  # the other 29 are pending under the first replica's lease
        assert second.publisher.occurrences == []
        first.scheduler.tick()  # asks again: its own claims, still leased, are renewed
        fires = all_fires([first, second])
        assert len(fires) == 30
        assert max(fires.values()) == 1
    finally:
        first.scheduler.close()
        second.scheduler.close()


def test_a_slot_claimed_by_a_replica_that_died_is_published_once_by_another(
    redis_url: str, clock: FakeClock
) -> None:
    class DyingPublisher(RecordingPublisher):
        def publish(self, occurrence: Occurrence) -> None:
            raise ConnectionError("the replica died before its message left")

    lease = {"fork_scheduler_claim_lease": 0.5}
    dead = Replica(redis_url, clock, publisher=DyingPublisher(), **lease)
    survivor = Replica(redis_url, clock, **lease)
    try:
        clock.advance(1)
        dead.scheduler.tick()
        survivor.scheduler.tick()
        assert survivor.publisher.occurrences == []
        deadline = time.monotonic() + 15
        while len(survivor.publisher.occurrences) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
            clock.advance(0.05)
            survivor.scheduler.tick()
        slot = "2026-03-02T10:00:01+00:00"
        taken_over = [o for o in survivor.publisher.occurrences if o.slot.isoformat() == slot]
        assert sorted(o.entry for o in taken_over) == sorted(ENTRIES)
        assert all(o.task_id == task_id_for(o.entry, o.slot) for o in taken_over)
        assert max(all_fires([dead, survivor]).values()) == 1
    finally:
        dead.scheduler.close()
        survivor.scheduler.close()


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
    class DyingPublisher(RecordingPublisher):
        def publish(self, occurrence: Occurrence) -> None:
            raise ConnectionError("the replica died before its message left")

    lease = {"fork_scheduler_claim_lease": 0.5}
    dead = Replica(redis_url, clock, publisher=DyingPublisher(), **lease)
    clock.advance(1)
    dead.scheduler.tick()
    dead.scheduler.close()

    clock.advance(0.2)
    newcomer = Replica(redis_url, clock, **lease)
    try:
        first_slot = "2026-03-02T10:00:01+00:00"

        def taken_over() -> list[str]:
            return sorted(
                o.entry for o in newcomer.publisher.occurrences if o.slot.isoformat() == first_slot
            )

        deadline = time.monotonic() + 15
        while len(taken_over()) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
            clock.advance(0.05)
            newcomer.scheduler.tick()
        assert taken_over() == sorted(ENTRIES)
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
