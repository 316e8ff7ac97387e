"""A replica whose clock runs ahead of Redis's (a step not measured yet) hears ``early`` for
the slots it decides: it must not queue a retry per slot (a catchup="all" entry would queue a
thousand), and once its clock is corrected its queued items wake at their slots on Redis's
clock, not a step later. Real Redis; a fake clock ahead of Redis ``TIME``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from replica_helpers import START, schedulers, tick_for

from celery_fork_scheduler import every
from celery_fork_scheduler.testing import FakeClock

ENTRY = {"job": {"task": "t", "schedule": every(1).seconds, "catchup": "all"}}


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url) as make:
        yield make


def ahead(seconds: float) -> FakeClock:
    real = datetime.now(timezone.utc).replace(microsecond=0)
    return FakeClock((real + timedelta(seconds=seconds)).isoformat())


def test_slots_answered_early_by_far_leave_one_chain_item_not_one_retry_per_slot(
    make: Any,
) -> None:
    clock = ahead(3600)
    replica = make(clock, "a", beat_schedule=ENTRY)
    sizes = []
    for _ in range(40):
        clock.advance(0.25)
        replica.tick()
        sizes.append(len(replica.queue))
    assert replica.publisher.occurrences == []
    assert max(sizes) <= 2, sizes  # before: one more retry per second


def test_after_the_clock_is_corrected_items_queued_on_it_wake_at_their_slots(
    make: Any,
) -> None:
    clock = ahead(0)
    replica = make(clock, "a", beat_schedule=ENTRY)
    replica.tick()
    (when_before,) = [item.when for _, _, item in replica.queue._heap]
    slot = next(item.slot for _, _, item in replica.queue._heap)
    # A retry queued on a clock that was 600 s ahead, then the clock is corrected.
    replica.queue.push(when_before + 600, replica.entries["job"], slot, retry=True)
    replica.redis_clock.offset = timedelta(seconds=-0.5)
    replica._follow_corrections()
    assert sorted(item.when for _, _, item in replica.queue._heap) == [
        pytest.approx(when_before),
        pytest.approx(when_before),
    ]


def test_a_burst_of_retries_answered_early_by_far_is_asked_again_slot_by_slot(
    make: Any,
) -> None:
    """Simulator seed 5639 (shared broker): a replica started while Redis was away queued one
    retry per missed slot of a catchup="all" entry; its clock was ahead, so Redis answered them
    all ``early``. Only the earliest was asked again: 11 slots never published."""
    real = datetime.now(timezone.utc).replace(microsecond=0)
    clock = FakeClock((real + timedelta(seconds=60)).isoformat())
    replica = make(clock, "a", beat_schedule={"job": {**ENTRY["job"], "catchup": "skip"}})
    slots = [real + timedelta(seconds=seconds) for seconds in (3, 4, 5)]
    entry = replica.entries["job"]
    for slot in slots:
        replica.queue.push(clock().timestamp(), entry, slot, retry=True)
    replica.tick()  # Redis answers early by 3 to 5 s, and the clock is measured again
    assert replica.publisher.occurrences == []

    deadline = time.monotonic() + 30
    while not set(slots) <= {o.slot for o in replica.publisher.occurrences}:
        assert time.monotonic() < deadline, replica.publisher.occurrences
        clock.set(datetime.now(timezone.utc) + timedelta(seconds=60))
        replica.tick()
        time.sleep(0.05)


def test_a_clock_found_ahead_puts_each_chain_back_where_the_clock_was_wrong(
    make: Any,
) -> None:
    """Simulator seed 5832: a replica started while Redis was away, its clock 20 s ahead, so
    each entry's chain waited for the first slot after an instant that had not come yet. Once
    the clock was measured, the slots in between were never asked about (and its progress
    record said they were: 8 slots lost). Now each chain goes back by the correction."""
    clock = FakeClock(START)  # this host's clock: 20 s ahead of Redis's, not measured yet
    replica = make(clock, "a", beat_schedule={"job": {"task": "t", "schedule": every(2).seconds}})
    replica.tick()
    replica.redis_clock.offset = timedelta(seconds=-20)  # measured at last
    replica._follow_corrections()

    tick_for(replica.tick, clock, 24, step=0.5)

    published = sorted(o.slot for o in replica.publisher.occurrences)
    assert published, "nothing published"
    gaps = [b - a for a, b in itertools.pairwise(published)]
    assert all(gap == timedelta(seconds=2) for gap in gaps), published
    assert published[0] <= datetime.fromisoformat(START) - timedelta(seconds=16), published
