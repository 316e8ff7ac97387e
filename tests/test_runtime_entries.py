"""Runtime entries reach every replica: three Scheduler instances on one real Redis.

One fake clock drives the slot maths and each replica's refresh timer (``monotonic``); claims,
pause state and counters are real Redis.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import replica_helpers
from celery import Celery

from celery_fork_scheduler import ConfigError, Manager, every
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.signals import entry_skipped
from celery_fork_scheduler.store import RuntimeStore
from celery_fork_scheduler.testing import FakeClock

STATIC = {"static-report": {"task": "reports.static", "schedule": every(1).seconds}}


#: Every replica started gets an id of its own, as a restarted process does.
STARTS = itertools.count()


def make_app(redis_url: str) -> Celery:
    return replica_helpers.make_app(
        redis_url, STATIC, main="runtime_tests", fork_scheduler_refresh_interval=1.0
    )


class Cluster:
    """Replicas ticking in turn on one fake clock, and a Manager of the same app."""

    def __init__(self, redis_url: str, clock: FakeClock) -> None:
        self.redis_url = redis_url
        self.clock = clock
        self.replicas: list[replica_helpers.Beat] = []
        self.manager = Manager(make_app(redis_url), clock=clock)

    def start(self, count: int = 3) -> None:
        self.replicas = [
            replica_helpers.Beat(
                self.redis_url, self.clock, make_app(self.redis_url), f"runtime-{i}-{next(STARTS)}"
            )
            for i in range(count)
        ]

    def stop(self) -> None:
        for replica in self.replicas:
            replica.scheduler.close()
        self.replicas = []

    def tick(self) -> None:
        for replica in self.replicas:
            replica.scheduler.tick()

    def run_for(self, seconds: float, step: float = 0.25) -> None:
        replica_helpers.tick_for(self.tick, self.clock, seconds, step)

    def refresh(self) -> None:
        """Let one ``fork_scheduler_refresh_interval`` pass, then tick every replica."""
        self.clock.advance(1)
        self.tick()

    def fires(self, entry: str) -> collections.Counter[str]:
        return collections.Counter(
            occurrence.slot.isoformat()
            for replica in self.replicas
            for occurrence in replica.publisher.occurrences
            if occurrence.entry == entry
        )

    def clear(self) -> None:
        for replica in self.replicas:
            replica.publisher.clear()


@pytest.fixture
def cluster(redis_url: str, clock: FakeClock) -> Iterator[Cluster]:
    made = Cluster(redis_url, clock)
    made.start()
    made.tick()  # every replica has loaded the (empty) runtime store
    yield made
    made.stop()


@pytest.fixture
def skips() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def receiver(sender: Any = None, entry: str = "", reason: str = "", **_: Any) -> None:
        seen.append((entry, reason))

    entry_skipped.connect(receiver)
    yield seen
    entry_skipped.disconnect(receiver)


def seconds(*values: int) -> list[str]:
    return [f"2026-03-02T10:00:{value:02}+00:00" for value in values]


def test_an_added_entry_reaches_every_replica_within_one_refresh(
    cluster: Cluster, clock: FakeClock
) -> None:
    cluster.manager.every(2).seconds.name("added").do("reports.added")
    clock.advance(0.5)
    cluster.tick()
    assert not any("added" in r.scheduler.entries for r in cluster.replicas)  # not due yet
    clock.advance(0.5)
    cluster.tick()
    assert all("added" in r.scheduler.entries for r in cluster.replicas)
    assert all(r.scheduler.entries["added"].source == "runtime" for r in cluster.replicas)


def test_an_added_entry_fires_once_per_slot_across_the_replicas(
    cluster: Cluster, clock: FakeClock
) -> None:
    cluster.manager.every(2).seconds.name("added").do("reports.added")
    cluster.run_for(10)
    fires = cluster.fires("added")
    assert sorted(fires) == seconds(2, 4, 6, 8, 10)
    assert set(fires.values()) == {1}


def test_a_removed_entry_stops_firing_on_every_replica(cluster: Cluster, clock: FakeClock) -> None:
    cluster.manager.every(1).seconds.name("doomed").do("reports.doomed")
    cluster.run_for(3)
    assert cluster.fires("doomed")
    cluster.manager.remove("doomed")
    cluster.refresh()
    cluster.clear()
    cluster.run_for(5)
    assert cluster.fires("doomed") == {}
    assert not any("doomed" in r.scheduler.entries for r in cluster.replicas)
    assert len(cluster.fires("static-report")) == 5


def test_a_changed_entry_fires_on_its_new_schedule_everywhere(
    cluster: Cluster, clock: FakeClock
) -> None:
    cluster.manager.every(1).seconds.name("job").do("reports.job")
    cluster.run_for(2)
    cluster.manager.update("job", schedule=every(5).seconds)
    cluster.refresh()
    cluster.clear()
    cluster.run_for(10)
    assert sorted(cluster.fires("job")) == seconds(5, 10)
    assert set(cluster.fires("job").values()) == {1}


def test_pause_stops_firing_on_every_replica_within_one_tick_and_resume_restarts(
    cluster: Cluster, clock: FakeClock, skips: list[tuple[str, str]]
) -> None:
    cluster.manager.every(1).seconds.name("job").do("reports.job")
    cluster.run_for(2)
    cluster.manager.pause("job", note="maintenance")
    cluster.clear()
    cluster.run_for(4)
    assert cluster.fires("job") == {}
    assert [reason for entry, reason in skips if entry == "job"].count("paused") == 4
    cluster.manager.resume("job")
    cluster.clear()
    cluster.run_for(3, step=0.25)
    assert len(cluster.fires("job")) == 3
    assert set(cluster.fires("job").values()) == {1}


def test_pausing_a_static_entry_holds_on_every_replica(cluster: Cluster) -> None:
    cluster.manager.pause("static-report")
    cluster.clear()
    cluster.run_for(3)
    assert cluster.fires("static-report") == {}
    cluster.manager.resume("static-report")
    cluster.run_for(2)
    assert len(cluster.fires("static-report")) == 2


def test_a_runtime_entry_never_replaces_a_static_one_of_the_same_name(
    cluster: Cluster, clock: FakeClock, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match="static entry"):
        cluster.manager.add("static-report", "reports.impostor", every(1).seconds)
    # A Manager of an app that does not know the static entry writes it anyway.
    other = Manager(Celery("other", set_as_current=False, broker="memory://"))
    other.app.conf.fork_scheduler_redis_url = redis_url
    other.add("static-report", "reports.impostor", every(1).seconds)
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        cluster.refresh()
    cluster.clear()
    cluster.run_for(3)
    for replica in cluster.replicas:
        assert replica.scheduler.entries["static-report"].task == "reports.static"
    assert "static entry of this name exists" in caplog.text
    tasks = {o.task for r in cluster.replicas for o in r.publisher.occurrences}
    assert tasks == {"reports.static"}
    # Removing the impostor does not remove the static entry either.
    other.remove("static-report")
    cluster.clear()
    cluster.run_for(2)
    assert len(cluster.fires("static-report")) == 2


def test_a_restart_keeps_pause_state_and_run_counters(cluster: Cluster, clock: FakeClock) -> None:
    promised = cluster.manager.every(1).seconds.name("job").do("reports.job").next_run
    cluster.refresh()
    cluster.run_for(3)
    # The slot the Manager promised fires although the replicas saw the entry after it.
    assert promised is not None and min(cluster.fires("job")) == promised.isoformat()
    assert len(cluster.fires("job")) == 4
    cluster.manager.pause("job", note="until the fix is deployed")
    cluster.run_for(1)
    runs_before = cluster.manager.get("job").run_count
    assert runs_before == 4

    cluster.stop()
    clock.advance(30)
    cluster.start()
    cluster.run_for(3)
    assert cluster.fires("job") == {}
    job = cluster.manager.get("job")
    assert (job.paused, job.pause_note, job.run_count) == (True, "until the fix is deployed", 4)

    cluster.manager.resume("job")
    cluster.run_for(2)
    assert len(cluster.fires("job")) == 2
    assert cluster.manager.get("job").run_count == 6


def test_a_restarted_cluster_loads_runtime_entries_at_start(
    cluster: Cluster, redis_url: str, clock: FakeClock
) -> None:
    cluster.manager.every(1).seconds.name("job").do("reports.job")
    cluster.stop()
    clock.advance(5)
    cluster.start()
    assert all("job" in r.scheduler.entries for r in cluster.replicas)
    store = RuntimeStore(cluster.manager.store().client, Keys("scheduler:"))
    assert store.get("job") is not None


def test_after_redis_lost_its_data_every_replica_agrees_on_the_runtime_entries(
    cluster: Cluster, clock: FakeClock, redis_client: Any
) -> None:
    """A Redis restarted empty forgets runtime entries and resets the version counter: the
    replicas that knew them drop them like a fresh replica would, and see what is added next."""
    cluster.manager.every(1).seconds.name("forgotten").do("reports.forgotten")
    cluster.manager.every(1).seconds.name("other").do("reports.other")
    cluster.run_for(3)
    assert all("forgotten" in r.scheduler.entries for r in cluster.replicas)
    redis_client.flushall()
    # More writes than before the loss: the new version counter passes the replicas' own.
    for name in ("added-after", "second", "third"):
        cluster.manager.every(1).seconds.name(name).do("reports.added")
    cluster.refresh()
    cluster.clear()
    cluster.run_for(4)
    assert cluster.fires("forgotten") == {}
    for name in ("added-after", "second", "third"):
        assert len(cluster.fires(name)) == 4, name
        assert all(name in r.scheduler.entries for r in cluster.replicas)
