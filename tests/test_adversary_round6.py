"""Adversary round 6: two ordinary events meeting — runtime refreshes, Redis restarts, history.

Every test quotes the documented promise it checks and fails on the code it was written
against (see the round-6 report)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from replica_helpers import fired, make_app, make_scheduler, run_for

from celery_fork_scheduler import Manager, every, signals
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher, RedisServer


def at(hms: str) -> datetime:
    return datetime.fromisoformat(f"2026-03-02T{hms}+00:00")


@pytest.fixture
def reported() -> Iterator[list[tuple[str, Any, str]]]:
    seen: list[tuple[str, Any, str]] = []

    def on_skip(sender: Any = None, entry: str = "", slot: Any = None, reason: str = "", **_: Any):
        seen.append((entry, slot, reason))

    signals.entry_skipped.connect(on_skip)
    yield seen
    signals.entry_skipped.disconnect(on_skip)


def refresh_now(replica: Any) -> None:
    """Make the replica's next tick refresh its runtime entries."""
    replica._next_refresh = 0.0


# -- 1. max_runs raised while a replica has not refreshed yet ----------------------------------


def test_raising_max_runs_just_before_a_stale_replicas_finished_claim_keeps_the_entry(
    redis_url: str, clock: FakeClock, reported: list[Any]
) -> None:
    """docs/guarantees.md, failure table, "An entry uses up max_runs": "Raising max_runs brings
    it back." and row "A runtime entry is added, changed or removed": "what `add` and `update`
    answer as `next_run` fires, even if a replica loads the change after it."

    Events: a runtime entry (max_runs=1) ran once; the operator raises max_runs to 5 with
    `Manager.update`; the entry's next slot is due before the replica's next refresh. The claim
    carries the replica's stale max_runs (1) and answers `finished`; `Scheduler._retire` then
    deletes the runtime entry from the store *without an expected version*, wiping the update
    the operator was just told succeeded. The entry never fires again, on any replica.
    """
    app = make_app(redis_url, fork_scheduler_refresh_interval=1.0)
    manager = Manager(app, clock=clock)
    publisher = RecordingPublisher()
    replica = make_scheduler(
        redis_url, clock, publisher=publisher, fork_scheduler_refresh_interval=1.0
    )
    try:
        replica.setup_schedule()
        manager.add("report", "reports.x", every(2).seconds, max_runs=1)
        run_for(replica, clock, 2.5)  # 10:00:02 fires (its one run)
        assert fired(publisher) == {("report", at("10:00:02").isoformat()): 1}
        # Just after a refresh, and before 10:00:04 is due: raise max_runs.
        planned = replica._next_refresh
        while replica._next_refresh == planned:
            clock.advance(0.05)
            replica.tick()  # the tick that changes it refreshed
        assert clock.now < at("10:00:04") - timedelta(seconds=0.2), clock.now
        job = manager.update("report", max_runs=5)
        run_for(replica, clock, 8)
        stored = {j.name for j in manager.jobs()}
        assert "report" in stored, (
            f"update answered next_run {job.next_run} (max_runs 5), yet the entry was deleted; "
            f"reports {reported}"
        )
        assert len(fired(publisher)) >= 4, fired(publisher)
    finally:
        replica.close()


# -- 2. Redis restarts from an older RDB, and the Manager writes before the replica polls ------


def test_a_restart_from_an_older_snapshot_followed_by_writes_is_noticed_by_the_replicas(
    clock: FakeClock,
) -> None:
    """docs/guarantees.md, row "Redis loses data (restart without persistence, flush, failover
    to a lagging replica)": "Runtime entries the data loss took are dropped by every replica
    alike (each notices a new epoch of the runtime keys, or a version counter that went back,
    and reads the entries again)." and row "A runtime entry is added": "Every replica sees the
    change at its next refresh".

    Events: Redis restarts from an RDB taken before the entry `b` was added (version 2 -> 1,
    same epoch: it is in the snapshot); the Manager adds `c` and `d` (version 1 -> 3) before
    the replica's next refresh. The replica compares only epoch and version: the version did
    not go back (3 >= 2), so it asks for changes after 2 and gets `d` only. `c` is never
    scheduled on it, and `b`, gone from Redis, keeps firing there.
    """
    server = RedisServer(extra_args=("--dbfilename", "dump.rdb")).start()
    replica = None
    try:
        app = make_app(server.url, fork_scheduler_refresh_interval=1.0)
        manager = Manager(app, clock=clock)
        manager.add("a", "reports.a", every(10).seconds)
        redis.Redis.from_url(server.url).save()  # the snapshot: `a` only, version 1
        manager.add("b", "reports.b", every(10).seconds)
        replica = make_scheduler(
            server.url, clock, publisher=RecordingPublisher(), fork_scheduler_refresh_interval=1.0
        )
        replica.setup_schedule()
        assert {"a", "b"} <= set(replica.entries)

        server.stop()  # SIGTERM; no save points configured: the snapshot stays as it was
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.hkeys("scheduler:{runtime}:entries") == [b"a"]
        manager = Manager(make_app(server.url, fork_scheduler_refresh_interval=1.0), clock=clock)
        manager.add("c", "reports.c", every(10).seconds)
        manager.add("d", "reports.d", every(10).seconds)
        for _ in range(3):
            clock.advance(1.1)
            replica.tick()
        runtime = {name for name, e in replica.entries.items() if e.source == "runtime"}
        assert runtime == {"a", "c", "d"}, runtime
    finally:
        if replica is not None:
            replica.close()
        server.cleanup()


# -- 3. the Django admin's "last outcome" after the worker recorded the run ---------------------


def test_the_django_admin_shows_completed_once_the_worker_recorded_the_run(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """docs/django-admin.md, the list's columns: "Last run | when the last run was sent, and its
    last outcome: `sent`, `completed`, `failed`, or the reason of a skip (`busy`, `paused`,
    ...)".

    Events: beat publishes a slot (state `sent`), then the worker records the run `completed`
    (`record_outcome`, as `WorkerHooks.on_postrun` does). The page's row reads
    `Job.last_outcome`, which `Job.from_entry` takes from the state hash's `state` field; the
    worker's RECORD_OUTCOME script only bumps the counter and pushes the history item, never
    `state`. So the admin says `sent` for ever after a run completed: `completed` is never
    shown (a run that failed on the worker also shows `sent`).
    """
    from celery_fork_scheduler.backends.base import to_epoch_us
    from celery_fork_scheduler.backends.redis import record_outcome
    from celery_fork_scheduler.contrib.django.entries import rows
    from celery_fork_scheduler.ids import task_id_for
    from celery_fork_scheduler.keys import Keys

    schedule = {"report": {"task": "reports.x", "schedule": every(2).seconds}}
    publisher = RecordingPublisher()
    replica = make_scheduler(redis_url, clock, schedule, publisher=publisher)
    try:
        replica.setup_schedule()
        run_for(replica, clock, 2.5)
        assert fired(publisher) == {("report", at("10:00:02").isoformat()): 1}
    finally:
        replica.close()
    slot = at("10:00:02")
    record_outcome(
        redis_client,
        Keys("scheduler:"),
        "report",
        slot_us=to_epoch_us(slot),
        task_id=task_id_for("report", slot),
        who="celery@worker-1",
        outcome="completed",
        counter="completed",
        history_size=20,
        duration=0.05,
    )
    manager = Manager(make_app(redis_url, schedule), clock=clock)
    assert manager.history("report", 1)[0].outcome == "completed"  # the history knows
    (row,) = rows(manager.jobs())
    assert row.job.last_outcome == "completed", (row.job.last_outcome, row.outcome_class)


# -- 4. removed and added again under the same name within one refresh interval ----------------


def test_an_entry_removed_and_added_again_within_a_refresh_fires_no_slot_of_the_removed_one(
    redis_url: str, clock: FakeClock
) -> None:
    """docs/guarantees.md, row "A runtime entry is added, changed or removed": "A removed
    runtime entry is marked removed in its state, so a replica that has not seen the removal
    yet is refused its slots (skip reason `removed`)" and "Slots of the earlier definition
    already due at that instant still fire (unless the change disables the entry or removes
    it)".

    Events: `x` (every 10 s) is removed at 10:00:09.55, just after the replica's refresh, and
    added again under the same name with another schedule (every 3 s, next_run 10:00:12)
    before the next refresh. Removed alone, the old definition's 10:00:10 would be refused
    (`removed`); but the add starts the name afresh (`RuntimeStore.put` -> `_start_afresh`
    deletes the `removed` field), so the replica that has not refreshed yet claims and
    publishes 10:00:10 of the removed definition: a run that neither the removed entry nor the
    new one has.

    A documented limit (strict xfail) until round 39: the state now names the version that
    defines the entry since when (``defined``), and a claim under an earlier version of a slot
    after that instant is refused (``changed``).
    """
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add("x", "reports.x", every(10).seconds)
    publisher = RecordingPublisher()
    replica = make_scheduler(redis_url, clock, publisher=publisher)
    try:
        replica.setup_schedule()
        run_for(replica, clock, 9.0)
        planned = replica._next_refresh
        while replica._next_refresh == planned:
            clock.advance(0.05)
            replica.tick()  # the tick that changes it refreshed
        assert at("10:00:09") < clock.now < at("10:00:10"), clock.now
        manager.remove("x")
        job = manager.add("x", "reports.x", every(3).seconds)
        assert job.next_run == at("10:00:12")
        run_for(replica, clock, 8)
        slots = sorted(slot for name, slot in fired(publisher) if name == "x")
        assert at("10:00:10").isoformat() not in slots, slots
    finally:
        replica.close()


# -- 5. a Redis restart (with its data) between a slot's due time and its retry ---------------


# -- 6. a run with a retry, through an in-process worker: the job signals and the history ----------
