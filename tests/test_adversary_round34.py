"""Adversary round 34: the worker's release retried by the heartbeat (``_unfreed``), RELEASE
answering again after a lost reply, the parent forgetting runs its consumer no longer holds
(``_forget_ended``), and the scheduler's per-slot ``early`` bookkeeping.

Each test's docstring names the promise it broke and how; all four were found failing by round
34 and fixed with it: the worker retries a release only when it never got RELEASE's answer (not
when the hand-over that followed failed), GIVE_BACK_HELD clears RELEASE's noted answer, and the
parent lets a received run go only once its consumer has not held it for a settle time,
counting the runs waiting in a rate limit's token bucket as held, and a run let go stays
findable for a late ``task_failure`` (round 35).
Tests named ``test_probe_...`` are things that were checked and held (they pass).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery import signals as celery_signals
from heartbeat_helpers import OnePass
from kombu.exceptions import OperationalError
from kombu.utils import json as kombu_json
from replica_helpers import make_scheduler

import celery_fork_scheduler.held as held_module
from celery_fork_scheduler import signals
from celery_fork_scheduler.backends import lua
from celery_fork_scheduler.backends.base import to_epoch_us
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER, task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import build_occurrence, occurrence_to_json
from celery_fork_scheduler.testing import FakeClock
from celery_fork_scheduler.worker import Run, WorkerHooks

KEYS = Keys("scheduler:")
LEASE_S = 30
S1 = datetime(2026, 3, 2, 10, 1, tzinfo=timezone.utc)
S2 = datetime(2026, 3, 2, 10, 2, tzinfo=timezone.utc)
S3 = datetime(2026, 3, 2, 10, 3, tzinfo=timezone.utc)


class Flaky:
    """A real client; an ``eval`` of the script ``script`` fails once, either before it
    reaches Redis (``ran=False``: a refused connection) or after Redis ran it (``ran=True``:
    its reply is lost)."""

    def __init__(self, real: redis.Redis, script: str, *, ran: bool) -> None:
        self.real = real
        self.script = script
        self.ran = ran
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def eval(self, script: str, *args: Any) -> Any:
        if self.armed and script == self.script:
            self.armed = False
            if self.ran:
                self.real.eval(script, *args)
                raise redis.TimeoutError("Timeout reading from socket")
            raise redis.ConnectionError("Error 111 connecting to redis:6379. Connection refused.")
        return self.real.eval(script, *args)


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


def worker_app(redis_url: str, **conf: Any) -> Celery:
    """A worker's app whose broker is the claims' Redis (the messages can be counted)."""
    app = Celery("adv34", broker=redis_url, set_as_current=False)
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


@pytest.fixture
def publishes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Control of the held runs' publisher (``held.CeleryPublisher``): ``fail`` is a callable
    run on the next publish (``before``: it raises before the message leaves; ``after``: the
    message left, then it raises); every task id sent through it is listed in ``sent``."""
    state: dict[str, Any] = {"fail": None, "when": "before", "sent": []}
    real = held_module.CeleryPublisher

    class Controlled(real):  # type: ignore[misc,valid-type]
        def publish(self, occurrence: Any) -> None:
            fail, state["fail"] = state["fail"], None
            if fail is not None and state["when"] == "before":
                raise fail()
            super().publish(occurrence)
            state["sent"].append(occurrence.task_id)
            if fail is not None:
                raise fail()

    monkeypatch.setattr(held_module, "CeleryPublisher", Controlled)
    yield state


# -- 1. the heartbeat's retry of a release whose answer was already acted upon ------------------


def test_an_uncertain_held_publish_is_sent_again_by_the_heartbeat(
    redis_url: str, redis_client: redis.Redis, publishes: dict[str, Any]
) -> None:
    """Promise (docs/guarantees.md, promise 1): "a publish whose delivery is uncertain (it
    raised after the message may have reached the broker) counts as that once and is never
    sent again"; docs/singleton.md (buffer_one, a failed publish): "A publish that lost the
    broker midway (the message may have gone out) is recorded as `uncertain` and not held
    again"; and the new text: the handed-over run "is published then, once".

    Sequence: run A of a buffer_one entry ends; RELEASE answers (no reply lost) "send" H. The
    publish of H reaches the broker, then raises a transient error (the broker connection
    dropped while reading the reply: `uncertain`). HeldRuns.publish gives H back as
    `uncertain`, but that GIVE_BACK_HELD cannot reach Redis (ConnectionError: the broker and
    the claims share the Redis that just went away). ``_finish`` catches the ConnectionError
    (raised by ``_publish_held``, after RELEASE's reply was received and acted upon) as if the
    release itself had failed and files A in ``_unfreed``. Redis answers again; the next
    heartbeat asks RELEASE again with ARGV[3]="1": the marker is still H (the give-back never
    ran), so the noted answer "send" is given again and H is published a second time.

    What happens: two messages of H in the broker (the same task id: both run; the second
    finds its own id on the marker and START_SINGLETON lets it run). Cause: worker.py
    ``_finish``'s ``except`` files the run in ``_unfreed`` for any REDIS_UNREACHABLE error in
    the whole block, ``_publish_held`` included.
    """
    app = worker_app(redis_url)
    entry = sync_entry("buffer_one")
    held = held_of(entry, S1)
    held_id = task_id_for("sync", S1)
    redis_client.set(KEYS.running("sync"), "run-a", px=LEASE_S * 1000)
    redis_client.set(KEYS.buffered("sync"), held)
    hooks = WorkerHooks(app)
    real = hooks.client
    hooks._client = Flaky(real, lua.GIVE_BACK_HELD, ran=False)
    publishes["fail"] = lambda: OperationalError("Connection reset by peer")
    publishes["when"] = "after"

    hooks._finish(Run("sync", S1.isoformat(), "run-a", 0.0, True, False, "w@h"))
    assert queued_ids(redis_client) == [held_id]  # the message left (its publish raised)

    hooks._client = real  # Redis answers again
    hooks._beat_hearts(OnePass())  # type: ignore[arg-type]

    assert queued_ids(redis_client) == [held_id], "the uncertain held run was sent again"


def test_a_held_run_given_back_and_released_by_beat_is_published_again_by_the_heartbeat(
    redis_url: str, redis_client: redis.Redis, publishes: dict[str, Any]
) -> None:
    """Promise (docs/singleton.md, "Redis is unreachable"): the run a release hands over "is
    published then, once, even when Redis ran the first request and only its reply was lost";
    docs/guarantees.md promise 1 (each slot published at most once).

    Sequence (buffer_all, queue [H1, H2]): run A ends; RELEASE answers "send" H1 (its reply
    arrives). The worker's publish of H1 fails for certain (a non-transient error: nothing
    left), so HeldRuns gives H1 back (GIVE_BACK_HELD: marker freed, H1 back at the head of the
    queue); Redis runs that script but its reply is lost (TimeoutError). ``_finish`` files A in
    ``_unfreed``. A beat replica's claim of the next slot finds no marker and a queue: it
    hands the marker to the head, H1, and publishes it (``released``). Then the worker's
    heartbeat asks RELEASE again for A with ARGV[3]="1": the noted answer is (A, send, H1) and
    the marker is H1's task id again (the beat gave it), so RELEASE answers "send" H1 and the
    worker publishes it too.

    What happens: H1 is in the broker twice (beat's and the worker's). Cause: worker.py
    ``_finish`` files A in ``_unfreed`` on the give-back's lost reply (raised by
    ``_publish_held``, not by RELEASE); lua.py RELEASE's repeat check ("the marker is still the
    held run's task id") cannot tell the held run's own hand-over from a later one by the beat.
    """
    app = worker_app(redis_url)
    entry = sync_entry("buffer_all")
    h1, h2 = held_of(entry, S1), held_of(entry, S2)
    h1_id = task_id_for("sync", S1)
    redis_client.set(KEYS.running("sync"), "run-a", px=LEASE_S * 1000)
    redis_client.rpush(KEYS.buffered("sync"), h1, h2)
    redis_client.hset(
        KEYS.state("sync"),
        mapping={"hwm": to_epoch_us(S2), "state": "skipped", "reason": "buffered", "runs": 1},
    )
    hooks = WorkerHooks(app)
    real = hooks.client
    hooks._client = Flaky(real, lua.GIVE_BACK_HELD, ran=True)
    publishes["fail"] = lambda: ValueError("message refused by the broker")
    publishes["when"] = "before"

    hooks._finish(Run("sync", S1.isoformat(), "run-a", 0.0, True, False, "w@h"))
    assert queued_ids(redis_client) == []
    assert redis_client.get(KEYS.running("sync")) is None  # given back, in Redis
    assert redis_client.lindex(KEYS.buffered("sync"), 0) == h1.encode()
    hooks._client = real

    clock = FakeClock((S3 + timedelta(seconds=0.3)).isoformat())
    schedule = {"sync": {"task": "tasks.sync", "schedule": 60, "overlap": "buffer_all"}}
    beat_app = worker_app(redis_url, beat_schedule=schedule, fork_scheduler_owner_grace=0)
    beat = make_scheduler(redis_url, clock, app=beat_app)
    try:
        for _ in range(4):
            beat.tick()
            clock.advance(0.25)
            if queued_ids(redis_client):
                break
        assert queued_ids(redis_client) == [h1_id], "beat released the head of the queue"
        assert redis_client.get(KEYS.running("sync")) == h1_id.encode()

        hooks._beat_hearts(OnePass())  # type: ignore[arg-type]
    finally:
        beat.close()

    assert queued_ids(redis_client) == [h1_id], "H1 published by beat, then by the worker"


# -- 2. the parent's heartbeat forgets runs its consumer still reports on -----------------------


def test_the_heartbeat_forgets_a_run_while_celery_reports_its_hard_time_limit(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (worker.py module docstring, the worker's documented behaviour): it "sends ...
    one final outcome: job_failed (a hard time limit under the prefork pool included, reported
    by the pool's parent process)" and "frees the marker and the place when the last attempt
    ends, fails or is revoked"; docs/singleton.md buffer_one: the held run "is published as
    soon as the running one ends".

    Sequence (Celery 5's own ``Request.on_timeout(soft=False)``, the pool's parent): Celery
    calls ``task_ready(request)`` first (the request leaves ``worker_state.requests``), then
    ``backend.mark_as_failure`` (a result-backend round trip: slow when the backend is slow,
    e.g. the Redis that is also restarting), then ``task.on_failure``, then the
    ``task_failure`` signal. The run has run past its hard time limit, so it was received more
    long ago; a heartbeat pass in that window (here: the real
    heartbeat thread, a backend call lasting three heartbeat intervals) runs
    ``_forget_ended``: not in ``requests``, not executing in this process -> deleted from
    ``_received``. ``on_failure`` then finds no run and returns.

    What happens: no ``job_failed``, no `error` history item, the marker is not freed and the
    held buffer_one run is not handed over (it waits for the lease, then is superseded and
    never runs). Cause: worker.py ``_forget_ended`` (called from ``_beat_hearts``) races
    Celery's failure reporting; ``on_failure``'s parent side reads ``self._received`` only.
    Before the change the pruning ran only in ``on_received`` (the consumer thread). Checked:
    with ``_forget_ended`` a no-op, the test passes.
    """
    from celery.contrib.testing.mocks import TaskMessage
    from celery.worker import state as worker_state
    from celery.worker.request import Request

    app = worker_app(redis_url, fork_scheduler_singleton_lease=0.6)  # heartbeat every 0.2 s
    run_id = task_id_for("sync", S1)
    held = held_of(sync_entry("buffer_one"), S2)
    headers = {ENTRY_HEADER: "sync", SLOT_HEADER: S1.isoformat(), OVERLAP_HEADER: "buffer_one"}
    request = Request(TaskMessage("tasks.sync", id=run_id, **headers), app=app)
    hooks = WorkerHooks(app)
    failed: list[str] = []

    def on_job_failed(sender: Any = None, task_id: str = "", **_: Any) -> None:
        failed.append(task_id)

    celery_signals.task_failure.connect(hooks.on_failure, weak=False)
    signals.job_failed.connect(on_job_failed, weak=False)
    try:
        worker_state.task_reserved(request)  # the consumer files it, as Celery's strategy does
        hooks.on_received(request=request)  # starts the heartbeat thread
        redis_client.set(KEYS.running("sync"), run_id, px=60_000)
        redis_client.set(KEYS.buffered("sync"), held)
        time.sleep(1.2)  # it runs, in a pool process, up to its hard time limit

        def slow_mark_as_failure(*args: Any, **kwargs: Any) -> None:
            time.sleep(0.7)  # a slow result backend: the heartbeat passes meanwhile

        monkeypatch.setattr(app.backend, "mark_as_failure", slow_mark_as_failure)
        request.on_timeout(soft=False, timeout=1.0)
    finally:
        celery_signals.task_failure.disconnect(hooks.on_failure)
        signals.job_failed.disconnect(on_job_failed)
        worker_state.requests.pop(run_id, None)
        hooks.on_worker_shutdown()

    assert failed == [run_id], "job_failed was not sent for the hard time limit"
    assert redis_client.get(KEYS.running("sync")) != run_id.encode(), "marker not freed"


def test_a_rate_limited_run_waiting_in_its_token_bucket_loses_its_marker(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Promise (worker.py module docstring): the worker "keeps the singleton marker and the
    place under the concurrency cap alive while this worker holds the run: from the moment it
    receives the message (a countdown, an ETA or a prefetched backlog included) until the
    run's last attempt ends"; docs/singleton.md: "A prefork worker's main process stops
    renewing a run once its consumer no longer holds it" (it still holds this one).

    Sequence: a real in-process worker (solo pool) of a task with ``rate_limit="12/m"`` (one
    every 5 s). Two scheduled singleton runs of two entries of that task arrive; the first
    takes the token and runs, the second waits in Celery's token bucket (``limit_task``:
    Celery files a request in ``worker_state.requests`` only when it leaves the bucket). The
    heartbeat's ``_forget_ended`` sees it in neither ``requests`` nor ``scheduled_requests``
    and drops it after a short settle time: its marker (lease 3 s) is no longer renewed
    and expires while the worker still holds the run.

    What happens: the second entry's marker disappears before its run starts (any claim
    meanwhile wins a new run of the entry; this run is then skipped ``busy``, or, for
    buffer_all, the claim releases the next queued run: two runs at once / one lost). Cause:
    worker.py ``_forget_ended`` takes "not in requests / scheduled_requests" for "ended".
    (``on_received`` pruned the same way before the change, but only when another message
    arrived; now every heartbeat pass does. Checked: with ``_forget_ended`` a no-op, the test
    passes.)
    """
    from celery.contrib.testing.worker import start_worker

    from celery_fork_scheduler import install

    app = Celery("adv34rate", broker="memory://", set_as_current=False)
    app.conf.update(
        timezone="UTC",
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_singleton_lease=3,
    )
    started: dict[str, float] = {}

    @app.task(name="tasks.limited", shared=False, rate_limit="12/m")  # type: ignore[untyped-decorator]
    def limited(name: str) -> None:
        started[name] = time.monotonic()

    install(app)
    ids = {name: task_id_for(name, S1) for name in ("first", "second")}
    gone_at: float | None = None
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        for name, task_id in ids.items():
            redis_client.set(KEYS.running(name), task_id, px=3_000)  # as the claim left it
            headers = {ENTRY_HEADER: name, SLOT_HEADER: S1.isoformat(), OVERLAP_HEADER: "skip"}
            app.send_task("tasks.limited", args=(name,), task_id=task_id, headers=headers)
        deadline = time.monotonic() + 20
        while "second" not in started and time.monotonic() < deadline:
            if gone_at is None and not redis_client.exists(KEYS.running("second")):
                gone_at = time.monotonic()
            time.sleep(0.05)
    assert "second" in started, "the rate-limited run never ran"
    assert gone_at is None, (
        f"the marker of the waiting run expired {started['second'] - gone_at:.1f} s before it"
        " started (the worker held it all along)"
    )


# -- 3. probes that held ------------------------------------------------------------------------


def test_probe_a_clock_ahead_with_chains_and_bursts_of_retries_of_several_entries(
    redis_url: str,
) -> None:
    """Probe (passes). Promise (docs/guarantees.md 1 and 2): each slot once, never early, and
    the new ``_early`` per (entry, slot): "a chain work resumes from its own earliest early
    slot; a retry work re-queues each of its early slots".

    Sequence: a replica whose clock is 4 s ahead of Redis's (never measured: it stays ahead),
    with a catchup="all" chain every second (``chain``), a second chain (``other``, every 2 s),
    and bursts of retries of two entries (``r1``: 3 slots; ``r2``: 2 slots, one also asked by a
    second retry item in the same tick) all answered ``early`` by more than
    EARLY_CLOCK_CHECK. Ticked for ~7 s of real time.

    Checked: no slot published twice, no slot published before Redis's clock reached it, every
    retry slot published, and each chain's published slots contiguous (no slot missed between
    the first and the last).
    """
    from replica_helpers import schedulers

    from celery_fork_scheduler import every

    entries = {
        "chain": {"task": "t", "schedule": every(1).seconds, "catchup": "all"},
        "other": {"task": "t", "schedule": every(2).seconds, "catchup": "all"},
        "r1": {"task": "t", "schedule": every(1).hours, "catchup": "skip"},
        "r2": {"task": "t", "schedule": every(1).hours, "catchup": "skip"},
    }
    real = datetime.now(timezone.utc).replace(microsecond=0)
    clock = FakeClock((real + timedelta(seconds=4)).isoformat())
    retry_slots = {
        "r1": [real + timedelta(seconds=s) for s in (2, 3, 5)],
        "r2": [real + timedelta(seconds=s) for s in (3, 4)],
    }
    with schedulers(redis_url) as make:
        replica = make(clock, "a", beat_schedule=entries)
        for name, slots in retry_slots.items():
            for slot in slots:
                replica.queue.push(clock().timestamp(), replica.entries[name], slot, retry=True)
        replica.queue.push(
            clock().timestamp(), replica.entries["r2"], retry_slots["r2"][0], retry=True
        )
        published_at: list[tuple[str, datetime, float]] = []
        seen_count = 0
        end = time.monotonic() + 7
        while time.monotonic() < end:
            clock.set(datetime.now(timezone.utc) + timedelta(seconds=4))
            replica.tick()
            for occurrence in replica.publisher.occurrences[seen_count:]:
                published_at.append((occurrence.entry, occurrence.slot, time.time()))
            seen_count = len(replica.publisher.occurrences)
            time.sleep(0.05)
    keys = [(entry, slot) for entry, slot, _ in published_at]
    assert len(keys) == len(set(keys)), "a slot published twice"
    for entry, slot, at in published_at:
        assert at >= slot.timestamp() - 0.6, f"{entry} {slot} published early"
    for name, slots in retry_slots.items():
        assert set(slots) <= {slot for entry, slot in keys if entry == name}, name
    for name, step in (("chain", 1), ("other", 2)):
        slots = sorted(slot for entry, slot in keys if entry == name)
        assert slots, name
        gaps = [b - a for a, b in itertools.pairwise(slots) if b - a != timedelta(seconds=step)]
        assert not gaps, (name, slots)


class ReleaseFails:
    """A real client whose RELEASE fails for the runs in ``modes``: "refused" (never reached
    Redis) or "lost" (Redis ran it, the reply was lost), while ``down`` is set."""

    def __init__(self, real: redis.Redis, modes: dict[str, str]) -> None:
        self.real = real
        self.modes = modes
        self.down = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        mode = self.modes.get(str(args[numkeys])) if script == lua.RELEASE else None
        if self.down and mode == "refused":
            raise redis.ConnectionError("Connection refused")
        reply = self.real.eval(script, numkeys, *args)
        if self.down and mode == "lost":
            raise redis.TimeoutError("Timeout reading from socket")
        return reply


def test_probe_many_unfreed_runs_under_the_cap_are_freed_once_redis_answers(
    redis_url: str, redis_client: redis.Redis, publishes: dict[str, Any]
) -> None:
    """Probe (passes). Promise (docs/singleton.md, "Redis is unreachable"): a run that ended
    meanwhile "has its marker and its place freed by the worker's heartbeat as soon as Redis
    answers ... the run it hands over (buffer_one, buffer_all) is published then, once, even
    when Redis ran the first request and only its reply was lost".

    Sequence: one worker, cap 50; twelve capped buffer_one runs of twelve entries (each with a
    held run) end while their RELEASE fails: six refused, six with the reply lost (the hand-
    over done in Redis). Two heartbeat passes once Redis answers.

    Checked: every held run published exactly once, each holds its entry's marker and a place
    under the cap, no ended run keeps a place, ``_unfreed`` is empty.
    """
    app = worker_app(redis_url, fork_scheduler_max_concurrent=50)
    hooks = WorkerHooks(app)
    real = hooks.client
    names = [f"e{i}" for i in range(12)]
    modes = {f"run-{name}": ("refused" if i % 2 else "lost") for i, name in enumerate(names)}
    held_ids = {}
    for name in names:
        entry = entry_from_config(
            name,
            {"task": "tasks.sync", "schedule": 60, "overlap": "buffer_one"},
            default_timezone=timezone.utc,
        )
        redis_client.set(KEYS.running(name), f"run-{name}", px=LEASE_S * 1000)
        redis_client.zadd(KEYS.cap, {f"run-{name}": time.time() * 1e6 + LEASE_S * 1e6})
        redis_client.set(KEYS.buffered(name), held_of(entry, S1))
        held_ids[name] = task_id_for(name, S1)
    client = ReleaseFails(real, modes)
    hooks._client = client
    for name in names:
        hooks._finish(Run(name, S1.isoformat(), f"run-{name}", 0.0, True, True, "w@h"))
    assert len(hooks._unfreed) == 12
    assert queued_ids(redis_client) == []
    client.down = False
    hooks._beat_hearts(OnePass())  # type: ignore[arg-type]
    hooks._beat_hearts(OnePass())  # type: ignore[arg-type]
    assert sorted(queued_ids(redis_client)) == sorted(held_ids.values())
    assert hooks._unfreed == {}
    places = {member.decode() for member in redis_client.zrange(KEYS.cap, 0, -1)}
    assert places == set(held_ids.values())
    for name in names:
        assert redis_client.get(KEYS.running(name)) == held_ids[name].encode()
