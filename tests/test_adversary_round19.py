"""Adversary round 19: the singleton marker of a runtime entry removed and added again.

Simulator seed 367: a ``buffer_one`` runtime entry is removed while its run's marker is alive,
then added again. The removal set the marker's TTL to the removal's retention (a day) and the
re-add made it permanent (``PERSIST``), so every slot of the new entry was ``busy`` or held
back for ever. The marker keeps its own lease through both now.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from replica_helpers import START, make_app, make_scheduler

from celery_fork_scheduler import Manager, Scheduler, every
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

LEASE_MS = 60_000
KEYS = Keys("scheduler:")


def _single(manager: Manager, name: str, definition: dict[str, Any]) -> None:
    manager.remove(name)
    manager.add(name, **definition)


def _bulk(manager: Manager, name: str, definition: dict[str, Any]) -> None:
    manager.remove_many([name])
    manager.add_many([{"name": name, **definition}])


SOLO = {"task": "t", "schedule": every(1).seconds, "overlap": "skip"}


def singleton_replica(
    redis_url: str, clock: FakeClock, **conf: Any
) -> tuple[Manager, Scheduler, RecordingPublisher]:
    """The runtime singleton entry ``solo`` (every second, overlap ``skip``) and a replica."""
    app = make_app(redis_url, **conf)
    manager = Manager(app, clock=clock)
    manager.add("solo", **SOLO)
    publisher = RecordingPublisher()
    return manager, make_scheduler(redis_url, clock, app=app, publisher=publisher), publisher


@pytest.mark.parametrize("again", [_single, _bulk], ids=["add-remove", "add_many-remove_many"])
def test_a_running_marker_keeps_its_lease_through_removal_and_re_add(
    redis_url: str,
    redis_client: redis.Redis,
    again: Callable[[Manager, str, dict[str, Any]], None],
) -> None:
    clock = FakeClock(START)
    manager, scheduler, publisher = singleton_replica(redis_url, clock)
    try:
        for _ in range(12):
            clock.advance(0.25)
            scheduler.tick()
    finally:
        scheduler.close()
    assert publisher.occurrences, "the singleton entry never fired"
    marker = KEYS.running("solo")
    assert 0 < redis_client.pttl(marker) <= LEASE_MS  # held by the run just published

    again(manager, "solo", SOLO)

    ttl = redis_client.pttl(marker)
    assert 0 < ttl <= LEASE_MS, f"the run's marker now has TTL {ttl} ms (lease {LEASE_MS})"


def test_a_re_added_singleton_fires_once_the_old_runs_lease_ran_out(redis_url: str) -> None:
    """The same, end to end: the old run's marker (lease 0.5 s) expires and the re-added entry
    is claimed and published again."""
    clock = FakeClock(START)
    manager, scheduler, publisher = singleton_replica(
        redis_url, clock, fork_scheduler_singleton_lease=0.5
    )
    try:
        for _ in range(8):
            clock.advance(0.25)
            scheduler.tick()
        assert publisher.occurrences
        manager.remove("solo")
        manager.add("solo", **SOLO)
        before = len(publisher.occurrences)
        deadline = time.monotonic() + 20
        while len(publisher.occurrences) == before and time.monotonic() < deadline:
            clock.advance(0.25)
            scheduler.tick()
            time.sleep(0.05)  # real time: the marker's lease runs on Redis's clock
    finally:
        scheduler.close()
    assert len(publisher.occurrences) > before, "the re-added entry never fired again"
