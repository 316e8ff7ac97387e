"""Adversarial tests for issue 22 (pause on failure, buffer_all / cancel_other /
terminate_other, backfill), each against a real Redis. Every test here fails on the code as
it stands, for the reason its docstring gives."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery import signals as celery_signals
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state

from celery_fork_scheduler import Manager, Scheduler, every, install
from celery_fork_scheduler.backends.base import Claim
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock, wait_until

KEYS = Keys("scheduler:")
MINUTE = timedelta(minutes=1)


def _report(*args: Any, **kwargs: Any) -> None:
    """The task the entries name."""


@pytest.fixture
def bf_app(redis_url: str) -> Iterator[Celery]:
    app = Celery("adv22_backfill", set_as_current=False, broker=redis_url)
    app.conf.update(
        timezone="UTC",
        result_expires=None,
        fork_scheduler_redis_url=redis_url,
        beat_schedule={
            "queued": {"task": "tasks.report", "schedule": "* * * * *", "overlap": "buffer_all"}
        },
    )
    app.task(name="tasks.report", shared=False)(_report)
    yield app
    app.close()


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def test_backfill_of_a_buffer_all_entry_with_runs_queued_reports_each_slot(
    bf_app: Celery, redis_url: str, redis_client: redis.Redis
) -> None:
    """docs/manager.md "## Backfill": each slot of the range is *reported per slot* (one
    BackfillSlot per slot, oldest first); a run held back by overlap is ``skipped:buffered``,
    the running one ``already_published``; "Redis remembers a slot as published when ... its
    task id holds the running marker or the held-back message". docs/singleton.md: buffer_all
    keeps its queue in ``P{<entry>}:buffered``, "the key buffer_one uses".

    Observed: BACKFILL_CLAIM does ``GET P{queued}:buffered``, which is a *list* under
    buffer_all: the whole backfill dies with ``WRONGTYPE`` (a traceback, no slot reported) as
    soon as one run is queued."""
    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    slots = [minute - n * MINUTE for n in range(4, 0, -1)]
    backend = RedisBackend.from_url(redis_url, read_settings(bf_app.conf))
    try:
        for slot in slots[1:]:
            tid = task_id_for("queued", slot)
            message = json.dumps({"task_id": tid, "slot": slot.isoformat(), "task": "tasks.report"})
            [result] = backend.claim(
                [Claim("queued", slot, tid, overlap="buffer_all", held_message=message)]
            )
            if slot == slots[1]:
                assert result.outcome.value == "won"
                backend.mark_sent([Claim("queued", slot, tid, overlap="buffer_all")])
            else:
                assert result.outcome.value == "buffered"
    finally:
        backend.close()
    assert redis_client.type(KEYS.buffered("queued")) == b"list"
    assert redis_client.llen(KEYS.buffered("queued")) == 2

    results = Manager(bf_app).backfill("queued", slots[0], slots[-1], rate=1000)
    assert [r.slot for r in results] == slots
    outcomes = [r.outcome for r in results]
    assert outcomes[0] == "skipped:busy"  # the run of slots[1] holds the marker
    assert outcomes[1] == "already_published"
    assert outcomes[2:] == ["skipped:buffered", "skipped:buffered"]


# -- overlap cancel_other on an in-process worker -------------------------------------------------

START = datetime(2026, 3, 2, 10, 0, 0, 300000, tzinfo=timezone.utc)
EVENTS = "adv22:events"


class _WorkerStandIn:
    def __init__(self, app: Celery) -> None:
        self.app = app


def _overlap_app(redis_url: str, definition: dict[str, Any], **conf: Any) -> Celery:
    app = Celery("adv22_overlap", broker=redis_url, set_as_current=False)
    app.conf.update(
        {
            "timezone": "UTC",
            "beat_schedule": {"e": definition},
            "fork_scheduler_redis_url": redis_url,
            "fork_scheduler_owner_grace": 0,
            "fork_scheduler_singleton_lease": 5,
            "result_expires": None,
            "broker_connection_retry_on_startup": False,
            **conf,
        }
    )

    @app.task(bind=True, name="adv22.flaky_once", shared=False, max_retries=3)
    def flaky_once(self: Any) -> str:
        client = redis.Redis.from_url(redis_url)
        slot = self.request.get("fork_scheduler_slot")
        client.rpush(EVENTS, json.dumps({"slot": slot, "try": self.request.retries}))
        first = client.incr("adv22:attempts") == 1
        client.close()
        if first:
            # The first attempt ever fails and retries later (Celery's default delay is 180 s).
            raise self.retry(exc=ValueError("transient"), countdown=4)
        return "ok"

    @app.task(bind=True, name="adv22.slow", shared=False)
    def slow(self: Any, seconds: float) -> None:
        client = redis.Redis.from_url(redis_url)
        slot = self.request.get("fork_scheduler_slot")
        client.rpush(EVENTS, json.dumps({"slot": slot, "event": "start", "at": time.time()}))
        time.sleep(seconds)
        client.rpush(EVENTS, json.dumps({"slot": slot, "event": "end", "at": time.time()}))
        client.close()

    @app.task(bind=True, name="adv22.rejects", shared=False)
    def rejects(self: Any) -> None:
        from celery.exceptions import Reject

        client = redis.Redis.from_url(redis_url)
        client.rpush(EVENTS, json.dumps({"slot": self.request.get("fork_scheduler_slot")}))
        client.close()
        raise Reject("bad payload", requeue=False)

    install(app)
    return app


def _events(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(EVENTS, 0, -1)]


class _Beat:
    def __init__(self, app: Celery, redis_url: str) -> None:
        self.app = app
        self.clock = FakeClock(START)
        self.scheduler = Scheduler(
            app,
            clock=self.clock,
            backend=RedisBackend.from_url(redis_url, read_settings(app.conf)),
            monotonic=lambda: self.clock.now.timestamp(),
            exit_on_config_error=False,
        )
        celery_signals.worker_init.send(sender=_WorkerStandIn(app))

    def run_for(self, seconds: float, step: float = 0.25) -> None:
        end = self.clock() + timedelta(seconds=seconds)
        while self.clock() < end:
            self.scheduler.tick()
            self.clock.advance(step)
        self.scheduler.tick()

    def close(self) -> None:
        self.scheduler.close()
        self.app.close()


def _history(client: redis.Redis, name: str = "e") -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(client.lrange(KEYS.history(name), 0, -1))]


def test_cancel_other_newest_run_is_lost_when_the_old_run_waits_for_a_retry(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """docs/singleton.md, cancel_other: "the newest slot wins: each new run replaces the one
    in progress"; a run **not started yet** ("an ETA, prefetched") "a worker that knows the
    revoke drops it when it comes up (task_revoked) ... Its marker is freed at once, or
    expires with its lease."

    Ordinary events: the old run's first attempt raised ``self.retry()`` (countdown, held in
    the worker's timer), then the next slot is published. Observed: the worker's heartbeat
    keeps renewing the old run's marker while its retry waits, the revoke only drops it when
    its countdown ends, so the new run gives up after ``fork_scheduler_replace_wait``
    (``skipped:busy``) and then the old run is revoked too: after the takeover **no run of
    the entry executes at all** (a silent miss of the newest slot)."""
    worker_state.revoked.clear()
    app = _overlap_app(
        redis_url,
        {"task": "adv22.flaky_once", "schedule": every(1).seconds, "overlap": "cancel_other"},
        fork_scheduler_replace_wait=1,
    )
    beat = _Beat(app, redis_url)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False):
            beat.run_for(1)  # slot 1: first attempt raises retry (countdown 4 s)
            wait_until(lambda: redis_client.llen(EVENTS) == 1, timeout=10, what="first attempt")
            beat.run_for(1)  # slot 2 published: it must replace the run waiting for its retry
            deadline = time.monotonic() + 12

            def settled() -> bool:
                outcomes = [item["outcome"] for item in _history(redis_client)]
                return (
                    "completed" in outcomes
                    or (("skipped:busy" in outcomes) and ("revoked" in outcomes))
                    or time.monotonic() > deadline
                )

            wait_until(settled, timeout=15, what="the takeover to settle")
    finally:
        beat.close()
        worker_state.revoked.clear()
    outcomes = [(item["slot"], item["outcome"]) for item in _history(redis_client)]
    completed = [o for o in outcomes if o[1] == "completed"]
    assert completed, f"no run of the entry executed after the takeover: {outcomes}"


# -- backfill after a replica died between its fence and its record ------------------------------


@pytest.fixture
def minutely_app(redis_url: str) -> Iterator[Celery]:
    app = Celery("adv22_backfill_fence", set_as_current=False, broker=redis_url)
    app.conf.update(
        timezone="UTC",
        result_expires=None,
        fork_scheduler_redis_url=redis_url,
        beat_schedule={"minutely": {"task": "tasks.report", "schedule": "* * * * *"}},
    )
    app.task(name="tasks.report", shared=False)(_report)
    yield app
    app.close()


def test_backfill_never_resends_a_slot_whose_publisher_died_after_its_fence(
    minutely_app: Celery, redis_url: str, redis_client: redis.Redis
) -> None:
    """docs/manager.md "### What "never published" means": "Redis remembers a slot as
    published when ... the scheduler holds a pending claim for it"; ``skipped:in_flight``:
    "the history says the scheduler's publisher died after fencing it: the message may have
    left"; docs/guarantees.md: a fenced slot "may have left" and is "never sent again".

    Ordinary events: a beat replica claimed and fenced a slot (``...|publishing``), published
    it and was killed before recording it (the outage a backfill is meant for). Two days
    later the entry's next won claim drops the stale pending field (claims older than a day
    are pruned, docs/redis-layout.md) and nothing in the history says ``in_flight``; the
    operator back-fills the outage. Observed: the slot is ``sent`` again -- a second message
    for a slot whose first may well have reached the broker."""
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    fenced = now - timedelta(days=2)
    fenced_us = _us(fenced)
    # As the killed replica left Redis: mark at the slot, claimed, fenced, never recorded.
    redis_client.hset(
        KEYS.state("minutely"),
        mapping={
            "hwm": fenced_us,
            "state": "claimed",
            "owner": "r1",
            "task_id": task_id_for("minutely", fenced),
            "claimed_at": fenced_us,
        },
    )
    redis_client.hset(KEYS.pending("minutely"), fenced_us, f"r1|{fenced_us}|publishing")
    # The replica that came back (catch-up off) claims the current slot.
    backend = RedisBackend.from_url(redis_url, read_settings(minutely_app.conf))
    try:
        current = now - MINUTE
        [won] = backend.claim([Claim("minutely", current, task_id_for("minutely", current))])
        assert won.outcome.value == "won"
        backend.begin_publish([Claim("minutely", current, task_id_for("minutely", current))])
        backend.mark_sent([Claim("minutely", current, task_id_for("minutely", current))])
    finally:
        backend.close()
    before = redis_client.llen("celery")
    [result] = Manager(minutely_app).backfill("minutely", fenced, fenced, rate=1000)
    assert result.outcome in ("skipped:in_flight", "skipped:pending", "already_published"), (
        f"a slot fenced by a publisher that died was backfilled again: {result}"
    )
    assert redis_client.llen("celery") == before


def test_buffer_all_runs_no_more_than_max_runs(redis_url: str, redis_client: redis.Redis) -> None:
    """docs/schedules.md: ``max_runs`` -- "the entry stops after this many runs, counted in
    Redis across replicas and restarts; later slots are recorded as ``finished``";
    docs/singleton.md: "Queued runs are given back to ``max_runs`` until they are handed the
    marker."

    Ordinary events: a ``buffer_all`` entry with ``max_runs: 2`` whose first run takes longer
    than a few intervals, so three slots are queued behind it. Observed: RELEASE hands the
    marker to every queued run without looking at ``max_runs``; all four runs execute and
    ``runs`` in the state hash goes past the limit."""
    worker_state.revoked.clear()
    app = _overlap_app(
        redis_url,
        {
            "task": "adv22.slow",
            "schedule": every(1).seconds,
            "args": [1.0],
            "overlap": "buffer_all",
            "max_runs": 2,
        },
    )
    beat = _Beat(app, redis_url)
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            beat.run_for(1)  # slot 1 runs
            wait_until(lambda: len(_events(redis_client)) >= 1, timeout=10, what="first start")
            # Hold the marker long enough for three more slots to be queued (fake clock).
            beat.run_for(3)
            queued = redis_client.llen(KEYS.buffered("e"))
            assert queued == 3

            def drained() -> bool:
                return redis_client.llen(KEYS.buffered("e")) == 0 and not redis_client.exists(
                    KEYS.running("e")
                )

            wait_until(drained, timeout=15, what="the queue to drain")
    finally:
        beat.close()
        worker_state.revoked.clear()
    starts = [e["slot"] for e in _events(redis_client) if e["event"] == "start"]
    state = redis_client.hgetall(KEYS.state("e"))
    assert len(starts) <= 2, (
        f"max_runs 2 but {len(starts)} runs executed ({starts}); {queued} were queued; "
        f"runs={state.get(b'runs')}"
    )


# -- pause on failure ----------------------------------------------------------------------------


def test_a_run_that_rejects_its_message_for_good_is_recorded_and_pauses(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """docs/schedules.md "## Pause on failure": "Only a run's final failure counts (Celery's
    ``task_failure``: its last attempt raised, ...)"; the worker "pauses the entry for the whole
    cluster" and records the failure (``errors`` counter, the ``error`` item of the history).

    Ordinary event: the task raises ``celery.exceptions.Reject(requeue=False)`` -- the run
    ends for good; Celery marks it FAILURE and sends ``task_failure`` (from the worker's main
    process, after ``task_postrun``). Observed (solo pool, likewise threads): the hooks dropped
    the run at ``task_postrun`` (state REJECTED), so that ``task_failure`` finds nothing: no
    ``error`` outcome, no ``errors`` count, no pause -- the run has no final outcome at all.
    (Under prefork the pool's parent still holds the run in ``_received``, so by the code's
    reading the same failure would pause there: the outcome depends on the pool.)"""
    worker_state.revoked.clear()
    app = _overlap_app(
        redis_url,
        {"task": "adv22.rejects", "schedule": every(1).seconds, "pause_on_failure": True},
    )
    failures: list[str] = []

    def seen(sender: Any = None, task_id: str = "", **_: Any) -> None:
        failures.append(task_id)

    celery_signals.task_failure.connect(seen, weak=False)
    beat = _Beat(app, redis_url)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False):
            beat.run_for(1)
            wait_until(lambda: failures, timeout=10, what="Celery's task_failure of the run")
            wait_until(
                lambda: not redis_client.exists(KEYS.running("e")) and redis_client.llen(EVENTS),
                timeout=5,
                what="the run to end",
            )
    finally:
        celery_signals.task_failure.disconnect(seen)
        beat.close()
    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(KEYS.state("e")).items()}
    outcomes = [item["outcome"] for item in _history(redis_client)]
    assert state.get("paused") == "1", f"not paused; state {state}, history {outcomes}"
    assert state.get("errors") == str(len(failures)), (state, outcomes, failures)


def test_cancel_other_an_older_scheduled_run_does_not_cancel_a_newer_triggered_one(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """docs/singleton.md, cancel_other: "the newest slot wins: each new run replaces the one in
    progress"; "A run that waits in the broker behind its replacement is dropped when it
    starts (it is not the latest run)". docs/manager.md: a triggered run "holds the marker
    like a scheduled one" and "The worker treats a triggered run as a scheduled one".

    Ordinary events: the workers are down longer than the lease, so the marker of a
    published scheduled run (L) expires in the broker (docs: "its marker expires after the
    lease"); an operator then triggers the entry (M, reported sent: the marker was free).
    The worker comes back. Observed: L, older, starts first, finds itself still the entry's
    ``latest_run`` (a trigger does not set it) and *revokes the newer triggered run M*; the
    run the operator asked for is dropped and the stale slot runs instead."""
    worker_state.revoked.clear()
    app = _overlap_app(
        redis_url,
        {
            "task": "adv22.slow",
            "schedule": every(1).seconds,
            "args": [0.1],
            "overlap": "cancel_other",
        },
        fork_scheduler_singleton_lease=1,
    )
    beat = _Beat(app, redis_url)
    try:
        beat.run_for(1)  # one slot (L) is published; no worker is up; beat ticks no more
        assert redis_client.llen("celery") == 1
        wait_until(
            lambda: not redis_client.exists(KEYS.running("e")),
            timeout=10,
            what="L's marker to expire in the broker",
        )
        triggered = Manager(app).trigger("e")
        assert triggered.skipped is None and triggered.task_id
        with start_worker(app, pool="solo", perform_ping_check=False):

            def both_ended() -> bool:
                ends = [i for i in _history(redis_client) if i["outcome"] != "sent"]
                return len({i["task_id"] for i in ends}) >= 2

            wait_until(both_ended, timeout=15, what="both runs to end")
    finally:
        beat.close()
        worker_state.revoked.clear()
    outcomes = {(i["task_id"], i["outcome"]) for i in _history(redis_client)}
    assert (triggered.task_id, "completed") in outcomes, (
        f"the triggered run did not run: {sorted(outcomes, key=str)}"
    )
