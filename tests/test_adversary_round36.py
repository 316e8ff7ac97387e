"""Adversary round 36: the scheduler's backlog shedding before claims (``_decide`` /
``_work_for`` / ``_shed_backlog``), the worker's hand-over after RELEASE's answer, the fork hook,
``_let_go``, ``_consumer_holds``, and START_SINGLETON's order modes.

Each test's docstring names the promise, the sequence, what happened and where. The three
defects were found failing by round 36 and fixed with it: a held run Redis kept from leaving
(before its publish) is sent by the heartbeat while its lease lasts (``HeldNotSent``,
``_unsent``); shedding keeps each entry's latest slot that fires, not one on an exclusion date;
a slot whose claim cannot be made fails alone (``entry_failed`` and skip ``error`` for it).
Tests whose docstring says "Probe" are things that were checked and held (they pass).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from heartbeat_helpers import OnePass
from kombu.utils import json as kombu_json

from celery_fork_scheduler.backends import lua
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import build_occurrence, occurrence_to_json
from celery_fork_scheduler.worker import Run, WorkerHooks

KEYS = Keys("scheduler:")
LEASE_S = 30
S1 = datetime(2026, 3, 2, 10, 1, tzinfo=timezone.utc)
S2 = datetime(2026, 3, 2, 10, 2, tzinfo=timezone.utc)
S3 = datetime(2026, 3, 2, 10, 3, tzinfo=timezone.utc)


def worker_app(redis_url: str, **conf: Any) -> Celery:
    """A worker's app whose broker is the claims' Redis (the messages can be counted)."""
    app = Celery("adv36", broker=redis_url, set_as_current=False)
    app.conf.update(
        {
            "timezone": "UTC",
            "fork_scheduler_redis_url": redis_url,
            "fork_scheduler_singleton_lease": LEASE_S,
            **conf,
        }
    )

    @app.task(name="tasks.sync", shared=False)  # type: ignore[untyped-decorator]
    def sync() -> None: ...

    return app


def queued_ids(client: redis.Redis, queue: str = "celery") -> list[str]:
    """The task ids of the messages waiting in the Redis broker's queue."""
    return [kombu_json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]


def sync_entry(overlap: str) -> Any:
    return entry_from_config(
        "sync",
        {"task": "tasks.sync", "schedule": 60, "overlap": overlap},
        default_timezone=timezone.utc,
    )


def held_of(entry: Any, slot: datetime) -> str:
    return occurrence_to_json(build_occurrence(entry, slot, task_id_for(entry.name, slot)))


def history_slots(client: redis.Redis, name: str = "sync") -> list[tuple[int, str]]:
    """(slot us, outcome) of the entry's history items."""
    items = [kombu_json.loads(raw) for raw in client.lrange(KEYS.history(name), 0, -1)]
    return [(int(item.get("slot", 0)), str(item.get("outcome"))) for item in items]


class FailsScript:
    """A real client whose ``eval`` of one script raises ``error`` (once), before reaching
    Redis: the connection dropped (a restart, a failover) between two calls of one hand-over."""

    def __init__(self, real: redis.Redis, script: str, error: Exception) -> None:
        self.real = real
        self.script = script
        self.error: Exception | None = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def eval(self, script: str, *args: Any) -> Any:
        if script == self.script and self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.real.eval(script, *args)


# -- 1. a hand-over answered, then Redis blinks before the held run has its place -----------------


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("Connection reset by peer"), redis.ReadOnlyError("READONLY")],
    ids=["connection_reset", "read_only_after_failover"],
)
@pytest.mark.parametrize("overlap", ["buffer_one", "buffer_all"])
def test_a_held_run_handed_over_is_lost_unreported_when_redis_blinks_before_its_cap_place(
    redis_url: str, redis_client: redis.Redis, overlap: str, error: Exception
) -> None:
    """Promise (docs/singleton.md, "Redis is unreachable"): a run that ended meanwhile has its
    marker freed by the heartbeat "as soon as Redis answers ...: the run it hands over
    (`buffer_one`, `buffer_all`) is published then, once, even when Redis ran the first request
    and only its reply was lost"; the only loss documented unreported is "a `buffer_all` run whose
    hand-over's reply was lost" when its pool process exits first. held.py ``HeldRuns.publish``:
    "Over the cap it is skipped (`capped`); when its publish fails the marker is freed at once
    and the run recorded as failed". docs/singleton.md (the overlap table): the held run is
    "published by the worker as soon as the running one ends".

    Sequence (cap ``fork_scheduler_max_concurrent=1``): run T of ``sync`` holds the marker, run
    H (slot S2) is held back (buffer_one) / queued (buffer_all). T ends on a live worker:
    ``_finish`` frees T's place, RELEASE runs and answers ("send", H): H now holds the marker
    and was removed from the buffered key / popped from the queue. The very next Redis call of
    the hand-over, ``TAKE_CAP_PLACES`` for H (``HeldRuns.publish``), fails before reaching Redis:
    the connection dropped (Redis restarted, or a failover left the client on a demoted master:
    ``READONLY``). Redis answers again a moment later; the heartbeat passes three times.

    What happens: nothing retries: ``_finish`` now catches everything after RELEASE's answer
    ("The answer is in hand: ... never ask again") and only logs it, and T is not in
    ``_unfreed``. H was never published and nothing records it: no ``skips:capped``, no
    ``failed`` history item, no give-back (the buffered key stays empty, so the next claim does
    not even report it ``superseded``); H's marker is left to its lease. The slot is lost
    unreported although the failure came before any message could have left (retrying, or
    giving H back, would have been safe). Where: worker.py ``WorkerHooks._finish`` (the
    ``try`` around ``_publish_held``, new in rounds 34-35) and held.py ``HeldRuns.publish``
    (``confirmed()`` / ``TAKE_CAP_PLACES`` raise before the publish with no give-back).
    """
    app = worker_app(redis_url, fork_scheduler_max_concurrent=1)
    entry = sync_entry(overlap)
    run_id, held_id = task_id_for("sync", S1), task_id_for("sync", S2)
    redis_client.set(KEYS.running("sync"), run_id, px=LEASE_S * 1000)
    redis_client.zadd(KEYS.cap, {run_id: time.time() * 1e6 + LEASE_S * 1e6})
    if overlap == "buffer_one":
        redis_client.set(KEYS.buffered("sync"), held_of(entry, S2))
    else:
        redis_client.rpush(KEYS.buffered("sync"), held_of(entry, S2))
    hooks = WorkerHooks(app)
    working = hooks.client
    hooks._client = FailsScript(working, lua.TAKE_CAP_PLACES, error)
    run = Run("sync", S1.isoformat(), run_id, 0.0, True, True, "w@h", overlap=overlap)

    hooks._finish(run)  # T ends: RELEASE answers "send" H; H's cap place cannot be asked for
    hooks._client = working  # Redis answers again
    for _ in range(3):
        hooks._beat_hearts(OnePass())  # type: ignore[arg-type]

    published = queued_ids(redis_client)
    s2_us = int(S2.timestamp() * 1_000_000)
    recorded = [outcome for slot, outcome in history_slots(redis_client) if slot == s2_us]
    held_back = redis_client.exists(KEYS.buffered("sync"))
    assert published == [held_id] or recorded or held_back, (
        f"H (slot S2) lost unreported: published {published}, history of S2 {recorded}, "
        f"held back again {bool(held_back)}, marker {redis_client.get(KEYS.running('sync'))!r}"
    )


# -- 2. shedding a backlog whose latest slot is on an exclusion date ------------------------------


def _skips() -> tuple[list[tuple[str, datetime, str]], Any]:
    from celery_fork_scheduler import signals

    seen: list[tuple[str, datetime, str]] = []

    def on_skipped(
        sender: Any = None, entry: str = "", slot: Any = None, reason: str = "", **_: Any
    ) -> None:
        seen.append((entry, slot, reason))

    signals.entry_skipped.connect(on_skipped, weak=False)
    return seen, lambda: signals.entry_skipped.disconnect(on_skipped)


def test_a_replica_behind_sheds_every_slot_that_fires_when_the_latest_is_excluded(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Promise (docs/events.md, skip reason ``behind``): a replica too far behind gives "each
    entry ... its latest slot, in turn, and the older ones are dropped" (scheduler.py: "Celery's
    fire-once, applied under overload"); docs/schedules.md, exclusion dates: an excluded slot
    "is not a *missed* slot: `catchup: "latest"` fires the latest missed slot that was **not**
    excluded, and an excluded recent slot does not stand in for it", and "An excluded slot is
    **skipped, not removed**: the replica that comes to it claims it as usual, and the claim
    script itself records it skipped (reason `excluded`) ... exactly once across the cluster".

    Sequence: entry ``nightly-ish`` every second, ``catchup="all"``, ``exclude`` the date
    2026-03-03. One replica is on time at 23:59:01 and has learnt a rate of 50 slots a second
    (``_claim_rate``, set directly: a slow broker), then its next tick comes 605 s later (a GC
    pause): 58 due slots of 03-02 (they fire) and 547 of 03-03 (excluded), more than
    ``CLAIM_BATCH`` (500) and than 50/s x the 5 s grace, so ``_shed_backlog`` keeps only the
    work's last slot.

    What happens: the one slot kept is 00:09:06 on 03-03, an excluded slot: it is recorded
    ``skipped:excluded`` and nothing is published for the entry at all; the 58 slots that
    would have fired are reported ``behind`` (never claimed), and the 546 other excluded slots
    are reported ``behind`` too and never recorded ``skipped:excluded`` (the mark moves past
    them). The entry's fire-once under overload fires nothing: an excluded slot stood in for
    the ones that fire. Where: scheduler.py ``_shed_backlog`` (``work.slots[-1:]``, whatever
    ``entry.excludes`` says about it), run before ``_due_slot`` knows which slots are excluded.
    Not new in round 35 (shedding kept ``due[-1:]`` the same way since it was added).
    """
    from replica_helpers import make_scheduler

    from celery_fork_scheduler.testing import FakeClock

    schedule = {
        "nightly-ish": {
            "task": "tasks.sync",
            "schedule": 1.0,
            "catchup": "all",
            "exclude": ["2026-03-03"],
        }
    }
    clock = FakeClock("2026-03-02T23:59:00.300+00:00")
    scheduler = make_scheduler(redis_url, clock, schedule, replica_id="replica-a")
    skips, disconnect = _skips()
    try:
        scheduler.tick()
        clock.advance(1)
        scheduler.tick()
        before = len(scheduler.publisher.occurrences)
        assert before >= 1  # on time: 23:59:01 fired
        scheduler._claim_rate = 50.0  # it learnt its rate: 50 publishes a second (a slow broker)
        clock.advance(605)
        scheduler.tick()
        fired_now = [o.slot for o in scheduler.publisher.occurrences[before:]]
    finally:
        disconnect()
        scheduler.close()
    behind = [slot for _, slot, reason in skips if reason == "behind"]
    excluded_behind = [s for s in behind if s.date().isoformat() == "2026-03-03"]
    assert fired_now, (
        f"nothing fired after the pause: {len(behind)} slots shed 'behind' "
        f"({len(behind) - len(excluded_behind)} that fire, {len(excluded_behind)} excluded ones "
        "never recorded skipped:excluded); the one slot kept was excluded"
    )


# -- 3. one slot's message cannot be built: the whole work is dropped ----------------------------


def _failures() -> tuple[list[tuple[str, datetime]], Any]:
    from celery_fork_scheduler import signals

    seen: list[tuple[str, datetime]] = []

    def on_failed(sender: Any = None, entry: str = "", slot: Any = None, **_: Any) -> None:
        seen.append((entry, slot))

    signals.entry_failed.connect(on_failed, weak=False)
    return seen, lambda: signals.entry_failed.disconnect(on_failed)


def test_one_slot_whose_held_message_cannot_be_built_loses_the_other_slots_of_its_burst(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Promise (docs/guarantees.md, failure table): "Lazy `args`/`kwargs` raise, or a message
    cannot be built | ... | `entry_failed`, skip reason `error`; every other entry keeps
    firing"; entry.py ``_check_json``: lazy args of a buffering entry are not checked at load,
    "the scheduler checks what they return when it publishes"; docs/schedules.md ``catchup``
    ``"all"``: "every missed slot fires".

    Sequence: entry ``lazy-buffered``, every second, ``overlap="buffer_one"``,
    ``catchup="all"``, lazy ``args`` (a callable). The replica is on time, then its next tick
    comes 3 s late: slots S1, S2, S3 are due in one work. ``_decide`` now builds the work's
    DueSlots after shedding, one per slot, each calling the lazy args (``build_occurrence`` for
    the held message); the call for S2 returns something that is not JSON (a ``set``).

    What happens: the whole work is dropped by ``_entry_broke``: S1 and S3, whose messages build
    fine, are never claimed nor published; ``entry_failed`` names S1 (the queue item's slot),
    not S2, no skip is reported for S2 or S3, and the chain restarts after ``now``: S3 is lost
    silently. Where: scheduler.py ``_decide`` (one ``try`` around the list comprehension of the
    work's DueSlots, ``continue`` drops every slot of the work) and ``_entry_broke`` (reports
    ``item.slot``, requeues from ``now``). Not new in round 35: ``_work_for`` dropped the work
    the same way when it built the DueSlots itself.
    """
    from replica_helpers import START, make_scheduler

    from celery_fork_scheduler.testing import FakeClock

    calls = {"n": 0, "fail_at": -1}

    def lazy_args() -> list[Any]:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            return [{1, 2}]  # not JSON, this once
        return [calls["n"]]

    schedule = {
        "lazy-buffered": {
            "task": "tasks.sync",
            "schedule": 1.0,
            "overlap": "buffer_one",
            "catchup": "all",
            "args": lazy_args,
        }
    }
    clock = FakeClock(START)
    scheduler = make_scheduler(redis_url, clock, schedule, replica_id="replica-a")
    failures, disconnect = _failures()
    try:
        scheduler.tick()
        clock.advance(1)
        scheduler.tick()
        before = len(scheduler.publisher.occurrences)
        assert before == 1
        redis_client.delete(KEYS.running("lazy-buffered"))  # its run ended
        calls["fail_at"] = calls["n"] + 2  # the burst's second slot
        clock.advance(3)
        scheduler.tick()
        for _ in range(4):
            clock.advance(0.25)
            scheduler.tick()
        fired = sorted(o.slot.isoformat() for o in scheduler.publisher.occurrences[before:])
    finally:
        disconnect()
        scheduler.close()
    failed_slots = [slot.isoformat() for _, slot in failures]
    s1, s2, s3 = (f"2026-03-02T10:00:0{second}+00:00" for second in (2, 3, 4))
    held = redis_client.get(KEYS.buffered("lazy-buffered"))
    # S3 finds S1's run in progress: buffer_one holds it back (published when S1's run ends)
    held_slot = kombu_json.loads(held)["slot"] if held else None
    assert s1 in fired and (s3 in fired or held_slot == s3), (
        f"the burst's good slots S1, S3 were never published nor held (published since: "
        f"{fired}, held: {held_slot})"
    )
    assert failed_slots == [s2], f"entry_failed names {failed_slots}, not S2"


# -- probes ------------------------------------------------------------------------------------


def test_probe_a_forked_process_starts_with_none_of_its_parents_runs(redis_url: str) -> None:
    """Probe (held): ``os.register_at_fork``'s ``_after_fork`` gives a forked child a fresh,
    unlocked ``_lock`` (taken by the parent at the fork) and empty ``_received``,
    ``_unheld_since``, ``_let_go`` and ``_unfreed``; the parent keeps its own."""
    import os

    app = worker_app(redis_url)
    hooks = WorkerHooks(app)
    run = Run("sync", S1.isoformat(), "t", 0.0, True, False, "w@h", overlap="buffer_one")
    hooks._received["t"] = run
    hooks._unheld_since["t"] = 1.0
    hooks._let_go["u"] = run
    hooks._unfreed["v"] = (run, 1.0)
    hooks._lock.acquire()
    try:
        child = os.fork()
        if child == 0:
            ok = (
                hooks._lock.acquire(timeout=1)
                and not hooks._received
                and not hooks._unheld_since
                and not hooks._let_go
                and not hooks._unfreed
            )
            os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
    finally:
        hooks._lock.release()
    assert os.waitstatus_to_exitcode(status) == 0
    assert hooks._received and hooks._let_go and hooks._unfreed


def test_probe_a_consumer_set_that_keeps_changing_forgets_nothing(redis_url: str) -> None:
    """Probe (held): when Celery's sets change during every one of the three reads,
    ``_consumer_holds`` answers None and ``_forget_ended`` lets no run go that pass (a run is
    never dropped on a partial read)."""
    app = worker_app(redis_url)
    hooks = WorkerHooks(app)
    run = Run("sync", S1.isoformat(), "t", 0.0, True, False, "w@h", overlap="buffer_one")
    hooks._received["t"] = run
    hooks._unheld_since["t"] = -1e9  # unheld for ages

    class Changing:
        task_buckets = property(lambda self: (_ for _ in ()).throw(RuntimeError("changed")))

    hooks._consumer = Changing()
    assert hooks._consumer_holds() is None
    hooks._forget_ended()
    assert "t" in hooks._received and not hooks._let_go


def test_probe_shedding_keeps_a_takeover_retry_takeover_only(redis_url: str) -> None:
    """Probe (held): under shedding (backlog above ``CLAIM_BATCH``), a takeover retry's one slot
    is never shed and its DueSlot stays takeover-only (never a new claim); the chain of the
    same entry keeps only its latest slot, which is not the retry's (deduplicated by ``seen``
    before the shed)."""
    from datetime import timedelta

    from replica_helpers import START, make_scheduler

    from celery_fork_scheduler.testing import FakeClock
    from celery_fork_scheduler.timequeue import QueueItem

    schedule = {"e": {"task": "tasks.sync", "schedule": 1.0, "catchup": "all"}}
    clock = FakeClock(START)
    scheduler = make_scheduler(redis_url, clock, schedule, replica_id="replica-a")
    try:
        scheduler.tick()
        entry = scheduler.entries["e"]
        now = clock() + timedelta(seconds=10)
        retry_slot = now.replace(microsecond=0) - timedelta(seconds=8)
        items = [
            QueueItem(0.0, entry, retry_slot, True, True),
            QueueItem(0.0, entry, retry_slot - timedelta(seconds=1)),
        ]
        scheduler._claim_rate = 1.0  # a slow replica: 600 more items wait
        works = scheduler._decide(items, now, set(), len(items) + 600)
        retry, chain = works
        assert [d.claim.takeover for d in retry.due] == [True]
        assert [d.claim.slot for d in retry.due] == [retry_slot]
        assert len(chain.due) == 1 and not chain.due[0].claim.takeover
        assert chain.due[0].claim.slot == now.replace(microsecond=0)
    finally:
        scheduler.close()
