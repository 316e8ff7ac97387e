"""Adversary round 20: two ordinary events that meet (a runtime edit and a run, a held run,
a stale write).

Each test marked FAILS reproduced a documented promise that the code broke (fixed with this
file: the claim scripts write ``max_runs`` with every slot decided, a re-add sets
``fresh_after``, and ``RuntimeStore.put`` resets a name only within its write's own script on
one Redis); the one marked PROBE shows the mechanism a failing one relies on.

1. A stale ``max_runs`` field in the state hash (written by a ``buffer_all`` claim, never
   cleared by a change or a re-add) makes RELEASE drop held runs as ``finished``.
2. A run counted under a removed definition, skipped at start after the re-add, gives its
   run back to the new definition's counter: a re-added ``one_off`` entry runs twice.
3. A refused (stale) write of a removed name resets its state before the refusal: the
   ``removed`` mark goes, and a replica that has not seen the removal publishes its slots.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from celery.exceptions import Ignore
from replica_helpers import START, make_app, make_scheduler

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.backends import lua
from celery_fork_scheduler.ids import ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.manager import JobNotFoundError
from celery_fork_scheduler.store import StaleVersionError
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher
from celery_fork_scheduler.worker import WorkerHooks

KEYS = Keys("scheduler:")
LEASE_MS = 60_000


def _run_for(scheduler: Any, clock: FakeClock, seconds: float, step: float = 0.25) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)
        scheduler.tick()


def _release(client: redis.Redis, entry: str, task_id: str) -> Any:
    """What a worker's ``_finish`` runs when a singleton run's last attempt ends."""
    return client.eval(
        lua.RELEASE,
        3,
        KEYS.running(entry),
        KEYS.buffered(entry),
        KEYS.state(entry),
        task_id,
        LEASE_MS,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- FAILS: a re-added buffer_one entry drops its held runs as "finished" --------------------


@pytest.mark.parametrize("how", ["remove-and-add", "update"])
def test_a_buffer_one_entry_does_not_drop_its_held_run_as_finished_after_a_change(
    redis_url: str, redis_client: redis.Redis, how: str
) -> None:
    """FAILED before the fix.

    Promises: docs/singleton.md, ``buffer_one``: "the first such slot is held back
    (``buffered``) and published as soon as the running one ends"; docs/manager.md /
    store.py ``put``: "a new entry (a name added again included) starts afresh: no run count,
    no finished mark"; docs/guarantees.md: "Raising ``max_runs`` brings it back".

    Sequence: runtime entry ``e`` (every 1 s, ``overlap="buffer_all"``, ``max_runs=2``); its
    first slot is won (run T1 holds the marker), the next one is queued, which writes
    ``max_runs=2`` into the state hash for RELEASE. ``e`` is removed (its queue goes), T1 ends
    (RELEASE frees the marker), and ``e`` is added again as ``overlap="buffer_one"`` with **no**
    ``max_runs``. The re-add resets ``runs`` but not the stored ``max_runs`` field. The new
    entry wins a slot (runs 1), holds the next one; the run ends, the held run is handed over
    (runs 2); the next slot is held; when that run ends, RELEASE compares ``runs`` (2) with the
    stale ``max_runs`` (2) and answers ``finished``: the held run is deleted and recorded
    ``skipped:finished`` — for an entry that has no ``max_runs`` and keeps firing. From then on
    every held run of ``e`` is dropped: ``buffer_one`` has silently become ``skip``.

    ``update``: the same entry changed in place to ``overlap="buffer_one", max_runs=5`` while
    T1 runs with one slot queued ("a change from buffer_all to another policy leaves the queue
    to be handed over as the running run ends"): T1's end hands over one queued run (runs 2),
    and the end of that run drops the rest of the queue as ``finished`` although the entry has
    3 runs left (RELEASE still reads ``max_runs=2``).

    Root cause: the state field ``max_runs`` is written only by a ``buffer_all`` claim that
    queues (backends/lua.py, ``HSET max_runs`` in _CLAIM_BODY) and read by RELEASE for any held
    run; neither a change of the entry nor a re-add (store.py ``_FRESH_FIELDS``) updates or
    clears it.
    """
    clock = FakeClock(START)
    app = make_app(redis_url)
    manager = Manager(app, clock=clock)
    publisher = RecordingPublisher()
    scheduler = make_scheduler(redis_url, clock, app=app, publisher=publisher)
    try:
        manager.add("e", "t", every(1).seconds, overlap="buffer_all", max_runs=2)
        _run_for(scheduler, clock, 3)
        assert len(publisher.occurrences) == 1, publisher.fired()
        t1 = publisher.occurrences[0].task_id
        assert redis_client.llen(KEYS.buffered("e")) >= 1  # a slot queued: max_runs stored
        assert _text(redis_client.hget(KEYS.state("e"), "max_runs")) == "2"

        if how == "update":
            manager.update("e", overlap="buffer_one", max_runs=5)
            running = t1
        else:
            manager.remove("e")
            assert _release(redis_client, "e", t1) is None  # the old run ends: marker freed
            manager.add("e", "t", every(1).seconds, overlap="buffer_one")
            _run_for(scheduler, clock, 2)  # refresh: the new entry wins a slot, holds the next
            new = [o for o in publisher.occurrences if o.task_id != t1]
            assert len(new) == 1, publisher.fired()
            running = _text(redis_client.get(KEYS.running("e")))
        assert redis_client.exists(KEYS.buffered("e"))

        first = _release(redis_client, "e", running)  # that run ends: the held one is sent
        assert first is not None and _text(first[0]) == "send", first
        _run_for(scheduler, clock, 2)  # the next slot is held behind the handed-over run
        assert redis_client.exists(KEYS.buffered("e")), "no slot held behind the handed run"
        running = _text(redis_client.get(KEYS.running("e")))

        second = _release(redis_client, "e", running)
    finally:
        scheduler.close()
    assert second is not None
    assert _text(second[0]) == "send", (
        f"the held run of a buffer_one entry with runs left was answered {_text(second[0])!r}"
        f" (state max_runs={redis_client.hget(KEYS.state('e'), 'max_runs')!r},"
        f" runs={redis_client.hget(KEYS.state('e'), 'runs')!r})"
    )


# -- FAILS: a run of the removed definition gives its run back to the re-added one -----------


class _StubTask:
    """What the worker hooks read of a task: its app and request (headers, retries)."""

    def __init__(self, app: Celery, entry: str, slot: datetime, task_id: str) -> None:
        self.app = app
        self.request = Context(
            {
                ENTRY_HEADER: entry,
                SLOT_HEADER: slot.isoformat(),
                OVERLAP_HEADER: "skip",
                "id": task_id,
                "hostname": "w1@host",
                "retries": 0,
            }
        )


def _worker_runs(hooks: WorkerHooks, task: _StubTask, *, executes: bool) -> None:
    """A worker process picks the run up: prerun (marker check), the body or not, postrun."""
    task_id = task.request.id
    hooks.on_prerun(task_id, task)
    if executes:
        hooks.prevent(task_id)
        hooks.on_postrun(task_id, task, state="SUCCESS")
    else:
        with pytest.raises(Ignore):
            hooks.prevent(task_id)
        hooks.on_postrun(task_id, task, state="IGNORED")


def _wait_gone(client: redis.Redis, key: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)  # real time: the marker's lease runs on Redis's clock
    assert not client.exists(key), f"{key} never expired"


def test_a_re_added_one_off_entry_runs_once_even_when_an_old_run_is_skipped_late(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """FAILED before the fix.

    Promises: docs/schedules.md, ``max_runs``: "the entry stops after this many runs,
    counted in Redis"; ``one_off``: "one run, then done"; docs/guarantees.md promise 6
    (``max_runs`` holds for all replicas together); store.py ``put``: a name added again
    "starts afresh: no run count".

    Sequence (singleton lease 0.5 s): runtime entry ``e`` (every 1 s, ``singleton``,
    ``one_off``) wins slot S1 and publishes T1 (runs 1); T1 waits in the broker (workers busy
    or down). ``e`` is removed and added again with the same definition: ``runs`` is reset to 0.
    T1's marker expires (no worker holds it), the new ``e`` wins slot S2 (runs 1, marker T2).
    Now a worker picks T1 up: its marker is T2's, so T1 is not executed ("skipped:busy") and
    RECORD_SKIP "gives back" its run — to the *new* definition's counter, which never counted
    it: runs 0. T2 runs and ends. The next slot S3 is won and published: the re-added
    ``one_off`` entry ran twice (T2 and T3).

    Root cause: the give-back is by entry name (backends/lua.py RECORD_SKIP ``HINCRBY runs -1``,
    worker.py ``_record_skip``), while a re-add resets ``runs`` (store.py ``_FRESH_FIELDS``);
    a run counted under the removed definition is given back to the new one. (Listed as an
    unconfirmed suspicion in tests/test_adversary_policies_time.py, "not reproduced (timing)";
    this drives it deterministically.)
    """
    clock = FakeClock(START)
    app = make_app(redis_url, fork_scheduler_singleton_lease=0.5)
    manager = Manager(app, clock=clock)
    publisher = RecordingPublisher()
    scheduler = make_scheduler(redis_url, clock, app=app, publisher=publisher)
    hooks = WorkerHooks(app)
    definition: dict[str, Any] = {"singleton": True, "one_off": True}
    try:
        manager.add("e", "t", every(1).seconds, **definition)
        _run_for(scheduler, clock, 1.5)
        assert len(publisher.occurrences) == 1, publisher.fired()
        old = publisher.occurrences[0]

        manager.remove("e")
        manager.add("e", "t", every(1).seconds, **definition)
        _wait_gone(redis_client, KEYS.running("e"))  # T1 waits in the broker past its lease
        # S2 (10:00:02) is won, S3 is not due yet. (Since round 39 the replica's claim of S2
        # under the removed definition it still runs is refused, "changed"; it reads the
        # change at its next tick and wins S2 under the new one, a tick later.)
        _run_for(scheduler, clock, 0.75)
        new = [o for o in publisher.occurrences if o is not old]
        assert len(new) == 1, publisher.fired()

        # A worker finally gets T1: another run holds the marker, T1 is not executed.
        _worker_runs(hooks, _StubTask(app, "e", old.slot, old.task_id), executes=False)
        # T2 runs and ends (frees the marker).
        _worker_runs(hooks, _StubTask(app, "e", new[0].slot, new[0].task_id), executes=True)
        _run_for(scheduler, clock, 3)
    finally:
        scheduler.close()
    new = [o.slot.isoformat() for o in publisher.occurrences if o is not old]
    runs = redis_client.hget(KEYS.state("e"), "runs")
    assert len(new) == 1, f"the re-added one_off entry was published {new} (runs={runs!r})"


# -- FAILS: a refused (stale) write un-marks a removed entry -----------------------------------


class _Mono:
    """A monotonic clock the test moves by hand (a replica that does not refresh meanwhile)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lagging_replica_run(
    redis_url: str, refused_write: Any
) -> tuple[list[str], datetime, dict[bytes, bytes]]:
    """Replica ``lag`` fires ``e`` (every 1 s), then stops refreshing (its next refresh is
    later than the test); ``refused_write(manager, version)`` removes ``e`` and writes it
    with the version it had (refused); ``lag`` then ticks 3 s. The slots it published after
    the removal, the removal's instant and ``e``'s state after the refused write."""
    clock = FakeClock(START)
    app = make_app(redis_url)
    manager = Manager(app, clock=clock)
    publisher = RecordingPublisher()
    mono = _Mono()
    lag = make_scheduler(
        redis_url, clock, app=app, publisher=publisher, replica_id="lag", monotonic=mono
    )
    client = redis.Redis.from_url(redis_url)
    try:
        job = manager.add("e", "t", every(1).seconds)
        for _ in range(8):
            clock.advance(0.25)
            mono.now += 0.25
            lag.tick()
        assert publisher.fired("e"), "the entry never fired"
        removed_at = clock()
        refused_write(manager, job.version)
        state = client.hgetall(KEYS.state("e"))
        for _ in range(12):  # the fake clock moves on; lag's refresh is not due (mono frozen)
            clock.advance(0.25)
            lag.tick()
    finally:
        lag.close()
        client.close()
    after = [slot for slot in publisher.fired("e") if datetime.fromisoformat(slot) > removed_at]
    return after, removed_at, state


def _remove_only(manager: Manager, version: int) -> None:
    manager.remove("e")


def _stale_add(manager: Manager, version: int) -> None:
    """The removal, then an optimistic replacement by a writer that read version v."""
    manager.remove("e")
    with pytest.raises(StaleVersionError):
        manager.add("e", "t", every(1).seconds, replace_existing=True, expected_version=version)


def test_probe_a_replica_that_missed_a_removal_is_refused_the_later_slots(
    redis_url: str,
) -> None:
    """PROBE (passes): the mechanism the next test relies on. docs/guarantees.md, "A runtime
    entry is ... removed": "A removed runtime entry is marked removed in its state, so a
    replica that has not seen the removal yet is refused its slots (skip reason
    ``removed``)". A replica that has not refreshed since the removal publishes no slot after
    it."""
    after, _, state = _lagging_replica_run(redis_url, _remove_only)
    assert b"removed" in state
    assert after == []


def _update_meets_remove(manager: Manager, version: int) -> None:
    """``Manager.update`` reads ``e``; another Manager removes it before the update writes.
    The write is refused (stale), the retry finds no entry: JobNotFoundError."""
    other = Manager(manager.app, clock=manager._clock)  # the test's clock: removal marked then
    read = manager._stored

    def read_then_removed(name: str) -> Any:
        stored = read(name)
        manager._stored = read  # type: ignore[method-assign]
        other.remove(name)
        return stored

    manager._stored = read_then_removed  # type: ignore[method-assign]
    with pytest.raises(JobNotFoundError):
        manager.update("e", description="changed")


@pytest.mark.parametrize("refused_write", [_stale_add, _update_meets_remove])
def test_a_refused_stale_write_does_not_unmark_a_removed_entry(
    redis_url: str, refused_write: Any
) -> None:
    """FAILED before the fix.

    Promises: docs/guarantees.md ("A runtime entry is added, changed or removed"):
    "A removed runtime entry is marked removed in its state, so a replica that has not seen the
    removal yet is refused its slots"; docs/manager.md: versions "refuse stale updates"
    (``StaleVersionError``: nothing is written).

    Sequence: runtime entry ``e`` (version v) fires on replica ``lag``, whose next refresh is
    later than what follows. The Manager removes ``e``; then a writer that read ``e`` at
    version v replaces it optimistically: ``add(..., replace_existing=True,
    expected_version=v)`` — or ``Manager.update`` whose read came just before the removal,
    which does the same ``RuntimeStore.put(name, data, v)``. The write is refused
    (``StaleVersionError``: the entry is gone), as it must be. But ``put`` saw no stored entry
    (``fresh``) and reset the name's state *before* the script refused it: ``removed``,
    ``runs``, ``finished``, ``paused`` and the held run are gone. ``lag`` now claims and
    publishes every slot of the removed entry after the removal, until its refresh: the
    "refused its slots (``removed``)" guard was erased by a write that was refused.

    Root cause: store.py ``RuntimeStore.put`` runs ``_start_afresh`` (HDEL of
    ``_FRESH_FIELDS``) whenever the name has no stored entry, before the PUT script checks the
    expected version; a refused PUT does not undo it.
    """
    after, removed_at, state = _lagging_replica_run(redis_url, refused_write)
    assert after == [], (
        f"slots of e published after its removal at {removed_at.isoformat()}: {after}"
        f" (state after the refused write: {state})"
    )
