"""Adversary round 35: the worker's unfreed-marker retries (``_unfreed``), the parent forgetting
runs its consumer let go (``_forget_ended``), the forked pool process dropping inherited state
(``_ensure_heartbeat``), RELEASE answering again, and ``buffer_all``'s ``latest_start``.

Each test's docstring names the promise, the sequence, what happened and where. All five were
found failing by round 35 and fixed with it: the heartbeat reads Celery's request sets again
when the consumer changed one meanwhile (and forgets nothing that pass); a forked process resets
the hooks' lock and drops inherited runs (``os.register_at_fork``); runs no longer renewed are
kept (bounded) for a late ``task_failure``; RELEASE answers again only the asker's own noted
answer and a run that starts ends the note; a capped ``buffer_all`` run notes its slot started
only once it has its place (NOTE_START). Tests whose docstring says "Probe" are things that
were checked and held (they pass).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery import signals as celery_signals
from celery.worker import state as worker_state
from heartbeat_helpers import OnePass
from kombu.utils import json as kombu_json

from celery_fork_scheduler import signals
from celery_fork_scheduler import worker as worker_module
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER, task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import build_occurrence, occurrence_to_json
from celery_fork_scheduler.worker import Run, WorkerHooks

KEYS = Keys("scheduler:")
LEASE_S = 30
S1 = datetime(2026, 3, 2, 10, 1, tzinfo=timezone.utc)
S2 = datetime(2026, 3, 2, 10, 2, tzinfo=timezone.utc)
S3 = datetime(2026, 3, 2, 10, 3, tzinfo=timezone.utc)


class Shifted:
    """``time`` inside the worker module, with a monotonic clock moved by ``offset`` seconds
    (time passing inside a slow call, without the test waiting for it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def worker_app(redis_url: str, **conf: Any) -> Celery:
    """A worker's app whose broker is the claims' Redis (the messages can be counted)."""
    app = Celery("adv35", broker=redis_url, set_as_current=False)
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
def app(redis_url: str) -> Iterator[Celery]:
    app = worker_app(redis_url)
    yield app
    app.close()


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


def headers_of(slot: datetime, overlap: str = "buffer_one") -> dict[str, str]:
    return {ENTRY_HEADER: "sync", SLOT_HEADER: slot.isoformat(), OVERLAP_HEADER: overlap}


def received(hooks: WorkerHooks, task_id: str, slot: datetime = S1) -> None:
    """The consumer of ``hooks``' process received a singleton run of ``sync``."""
    from celery.app.task import Context

    headers = headers_of(slot)
    hooks.on_received(request=Context(id=task_id, headers=headers, **headers))


# -- 1. the heartbeat thread reads the consumer's WeakSet while the consumer writes it -----------


class EtaRequest:
    """A request waiting for its ETA (in ``worker_state.scheduled_requests``). Reading its id
    is where the heartbeat thread can lose the GIL to the consumer thread, which files the
    next ETA request it received at that instant (``strategy``: ``scheduled_requests.add``)."""

    def __init__(self, task_id: str, files: list[Any]) -> None:
        self._id = task_id
        self._files = files

    @property
    def id(self) -> str:
        while self._files:  # the consumer thread runs here, once
            worker_state.scheduled_requests.add(self._files.pop())
        return self._id


def test_a_heartbeat_pass_is_lost_when_the_consumer_files_an_eta_run_meanwhile(
    app: Celery, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Promise (docs/singleton.md, "A run that waited"): "While a worker holds the message
    (... an ETA in its timer ...) the worker's heartbeat keeps the marker and the place alive";
    "The lease and the heartbeat": the worker "renews the marker every third of the lease".

    Sequence: a worker's consumer holds runs waiting for their ETA (a catch-up burst, jittered
    or countdown runs: ``worker_state.scheduled_requests``, a ``weakref.WeakSet``). Its
    heartbeat thread, new in this change, starts each pass with ``_forget_ended`` ->
    ``_consumer_holds``, a Python-level comprehension over that WeakSet. The consumer (main)
    thread files another ETA request meanwhile (``scheduled_requests.add``; the timer's
    ``discard`` does the same): the set changes size during iteration.

    What happens: ``RuntimeError: Set changed size during iteration`` in the heartbeat thread;
    the whole pass is abandoned (``_beat_hearts``' ``try`` covers ``_forget_ended`` and the
    renewals), logged as a WARNING with a traceback, and no marker or place is renewed in that
    pass. A consumer that keeps receiving ETA runs (a large scheduled set takes many GIL slices
    to read) loses passes in a row, and a held run's marker expires: the next slot runs while it
    waits or executes. Where: worker.py ``_consumer_holds`` (iterates the live WeakSet from a
    thread that does not own it; ``list()``/``set()`` of a plain set is atomic, a WeakSet is
    not) called first in ``_beat_hearts``' try.
    """
    hooks = WorkerHooks(app)
    received(hooks, "waiting")
    keep = [EtaRequest("waiting", files=[EtaRequest("next", files=[])])]
    keep.append(keep[0]._files[0])
    worker_state.scheduled_requests.add(keep[0])
    redis_client.set(KEYS.running("sync"), "waiting", px=2_000)
    try:
        with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler.worker"):
            hooks._beat_hearts(OnePass())  # type: ignore[arg-type]
    finally:
        for request in keep:
            worker_state.scheduled_requests.discard(request)

    errors = [r.getMessage() for r in caplog.records if r.exc_info]
    assert redis_client.pttl(KEYS.running("sync")) > 2_000, (
        f"the held run's marker was not renewed: the pass died ({errors})"
    )


# -- 2. a pool process forked while the heartbeat thread holds the lock -------------------------


class BlockingHeld(set):  # type: ignore[type-arg]
    """The consumer's held ids, read by ``_forget_ended`` under ``_lock``: the first lookup
    waits for ``go`` (the instant billiard forks a new pool process)."""

    def __init__(self, inside: threading.Event, go: threading.Event) -> None:
        super().__init__()
        self.inside = inside
        self.go = go

    def __contains__(self, item: object) -> bool:
        self.inside.set()
        self.go.wait(10)
        return True


def test_a_pool_process_forked_while_the_heartbeat_holds_the_lock_hangs_at_its_first_run(
    app: Celery, redis_client: redis.Redis
) -> None:
    """Promise (docs/singleton.md, "Redis is unreachable" / the new text): "A prefork worker's
    main process stops renewing a run once its consumer has not held it for a lease ... so a
    marker its pool process could not free is never kept alive for ever"; worker.py module
    docstring: the worker "frees the marker and the place when the last attempt ends".

    Sequence: a prefork worker's main process runs its heartbeat thread; each pass now runs
    ``_forget_ended``, which loops over every received run while holding ``self._lock`` (also
    ``_free_unfreed`` and the snapshot). Billiard forks a new pool process from the main thread
    (``max_tasks_per_child``, a process replaced after a hard time limit) at an instant the
    heartbeat thread holds that lock. The child's copy of ``_lock`` is locked, and the thread
    that would release it does not exist in the child. The child's first scheduled run calls
    ``on_prerun`` -> ``with self._lock`` (and ``_ensure_heartbeat``'s new ``with self._lock``
    that drops the inherited runs).

    What happens: the pool process blocks for ever before the task body. The parent's consumer
    holds the request as active (``worker_state.requests``), so the parent's heartbeat renews
    the run's marker and cap place for ever: the entry is ``busy`` for good and the process is
    lost to the pool. Where: worker.py ``WorkerHooks._lock`` (a ``threading.Lock`` with no
    ``os.register_at_fork`` reset), taken in the child by ``on_prerun`` / ``_ensure_heartbeat``;
    the window is widened by ``_forget_ended``'s loop under the lock in the parent's heartbeat.
    """
    hooks = WorkerHooks(app)
    received(hooks, "waiting")
    hooks._heartbeat_pid = os.getpid()  # the main process's heartbeat is running
    inside, go = threading.Event(), threading.Event()
    hooks._consumer_holds = lambda: BlockingHeld(inside, go)  # type: ignore[method-assign]
    heartbeat = threading.Thread(target=hooks._forget_ended, daemon=True)
    heartbeat.start()
    assert inside.wait(5)  # the heartbeat thread is in _forget_ended's loop, lock held

    task = app.tasks["tasks.sync"]
    child = os.fork()
    if child == 0:  # the new pool process: its first scheduled run starts
        try:
            task.push_request(id="next-run", **headers_of(S2))
            hooks.on_prerun(task_id="next-run", task=task)
        finally:
            os._exit(0)
    go.set()
    heartbeat.join(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done, _ = os.waitpid(child, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked pool process hung in on_prerun (its copy of _lock is held)")


# -- 3. a hard time limit reported after the grace ----------------------------------------------


def test_a_hard_time_limit_reported_after_a_minute_is_lost(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (worker.py module docstring): the worker sends "one final outcome: job_failed
    (a hard time limit under the prefork pool included, reported by the pool's parent
    process)" and "frees the marker and the place when the last attempt ends, fails or is
    revoked"; docs/singleton.md, Release: "under the prefork pool, for a run killed at its
    hard time limit — on the task_failure that the worker's main process sends"; buffer_one:
    the held run "is published as soon as the running one ends".

    Sequence (Celery 5.7's own ``Request.on_timeout(soft=False)`` in the pool's parent):
    ``task_ready(request)`` (the consumer lets the request go), then
    ``backend.mark_as_failure`` (a result-backend round trip), then the task's own
    ``on_failure``, then the ``task_failure`` signal. The round trip takes more than a minute:
    the result backend is the Redis that is restarting and Celery retries it
    (``result_backend_always_retry``), or the user's ``Task.on_failure`` calls a slow service.
    Meanwhile the parent's heartbeat passes every third of the lease: the first sees the run
    unheld, one a minute later forgets it (the fixed grace then; the time is advanced on
    the worker module's monotonic clock instead of waited for).

    What happens: ``on_failure`` finds no received run and returns: no ``job_failed``, no
    ``error`` history item, the marker is not freed (it expires a lease later; the parent
    stopped renewing it) and the held ``buffer_one`` run is not handed over (superseded later,
    never run). Where: worker.py ``_forget_ended`` (a fixed grace, max(lease, 60 s), for a
    report whose delay Celery does not bound) and ``on_failure``'s parent side, which reads
    ``self._received`` only.
    """
    from celery.contrib.testing.mocks import TaskMessage
    from celery.worker.request import Request

    app = worker_app(redis_url)
    run_id = task_id_for("sync", S1)
    request = Request(TaskMessage("tasks.sync", id=run_id, **headers_of(S1)), app=app)
    redis_client.set(KEYS.running("sync"), run_id, px=LEASE_S * 1000)
    redis_client.set(KEYS.buffered("sync"), held_of(sync_entry("buffer_one"), S2))
    clock = Shifted()
    monkeypatch.setattr(worker_module, "time", clock)
    hooks = WorkerHooks(app)
    failed: list[str] = []

    def on_job_failed(sender: Any = None, task_id: str = "", **_: Any) -> None:
        failed.append(task_id)

    def slow_mark_as_failure(*args: Any, **kwargs: Any) -> None:
        hooks._beat_hearts(OnePass())  # type: ignore[arg-type]  # the run is seen let go
        clock.offset += 61  # the backend retries for a minute
        hooks._beat_hearts(OnePass())  # type: ignore[arg-type]

    monkeypatch.setattr(app.backend, "mark_as_failure", slow_mark_as_failure)
    celery_signals.task_failure.connect(hooks.on_failure, weak=False)
    signals.job_failed.connect(on_job_failed, weak=False)
    try:
        worker_state.task_reserved(request)  # the consumer files it, as Celery's strategy does
        hooks.on_received(request=request)
        request.on_timeout(soft=False, timeout=1.0)
    finally:
        celery_signals.task_failure.disconnect(hooks.on_failure)
        signals.job_failed.disconnect(on_job_failed)
        worker_state.requests.pop(run_id, None)
        hooks.on_worker_shutdown()

    assert failed == [run_id], "job_failed was not sent for the hard time limit"
    assert redis_client.get(KEYS.running("sync")) != run_id.encode(), "marker not freed"


# -- 4. RELEASE asked again after another process acted on its answer ----------------------------


def test_a_release_asked_again_after_the_held_run_started_publishes_it_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Promise (docs/singleton.md, "Redis is unreachable"): the run a release hands over "is
    published then, once ... (RELEASE answers the same again; never once the worker acted on an
    answer)"; docs/guarantees.md: a slot is published at most once. lua.py RELEASE's own
    comment: a noted "send" is not repeated when the held run is "superseded since ..., or
    already running".

    Sequence (buffer_one, run T holds the marker, H held): two processes end T — the prefork
    pool's parent (``task_failure`` for a hard time limit, or ``task_revoked`` with terminate,
    which free the markers in the parent) and the pool process that ran T to its end an instant
    before it was killed (``task_postrun`` -> ``_finish``). The parent's RELEASE fails before
    reaching Redis (its connection refused), so T goes to its ``_unfreed``; the pool process's
    RELEASE answers "send" H, which it publishes; H is received and starts (START_SINGLETON
    renews H's marker). Redis answers the parent again: its heartbeat asks RELEASE again with
    ARGV[3]="1". The marker is not T; the noted answer is (T, send, H), and the marker is H's
    task id — because H is running.

    What happens: RELEASE answers "send" H again and the parent publishes H a second time (two
    messages of H; the second finds its own id on the marker and runs too, after or even
    alongside the first on another worker). Where: lua.py RELEASE's repeat branch ("the marker
    is still the held run's task id" cannot tell "handed over, not yet sent" from "sent and
    running"), and nothing clears the note once the hand-over was acted on (only GIVE_BACK_HELD
    does).
    """
    app = worker_app(redis_url)
    run_id = task_id_for("sync", S1)
    held_id = task_id_for("sync", S2)
    redis_client.set(KEYS.running("sync"), run_id, px=LEASE_S * 1000)
    redis_client.set(KEYS.buffered("sync"), held_of(sync_entry("buffer_one"), S2))
    run = Run("sync", S1.isoformat(), run_id, 0.0, True, False, "w@h", overlap="buffer_one")
    parent, pool_process, next_worker = WorkerHooks(app), WorkerHooks(app), WorkerHooks(app)
    working = parent.client
    parent._client = redis.Redis(port=1, socket_connect_timeout=0.3)

    parent._finish(run)  # the parent's release never reaches Redis
    assert run_id in parent._unfreed
    pool_process._finish(run)  # the pool process's release hands H over and publishes it
    assert queued_ids(redis_client) == [held_id]
    started = Run("sync", S2.isoformat(), held_id, 0.0, True, False, "w@h", overlap="buffer_one")
    assert next_worker._take_markers(started) is None  # H starts

    parent._client = working  # Redis answers the parent again
    parent._beat_hearts(OnePass())  # type: ignore[arg-type]

    assert queued_ids(redis_client) == [held_id], "the held run H was published twice"


# -- 5. buffer_all: latest_start raised by a run that never executed -----------------------------


def test_a_capped_later_slot_makes_an_earlier_buffer_all_slot_refused(
    app: Celery, redis_client: redis.Redis
) -> None:
    """Promise (docs/singleton.md, buffer_all, a stalled replica): the late slot is not executed
    because "a run of a later slot has started already (it holds the marker, or it ran: the
    state hash keeps the latest slot started, `latest_start`)"; "The cluster-wide cap": a run
    refused by the cap is "not executed (`skipped:capped`)".

    Sequence (buffer_all entry, cap 1): slot S1's publish stalls past the lease. Slot S2 is
    published and waits in the broker past the lease (its marker and its cap place expire);
    another entry takes the cap's one place. S2 starts: START_SINGLETON takes the marker and
    raises ``latest_start`` to S2, then START_CAP refuses: S2 is skipped ``capped`` and its
    marker freed. The stalled replica publishes S1; S1 starts with the marker free and the cap
    free again.

    What happens: S1 is refused ``busy``: no later slot ran, and none holds the marker (S2 never
    executed), so both runs are lost where the documented rule loses none. Where: worker.py
    ``_take_markers`` runs START_SINGLETON (which raises ``latest_start``) before START_CAP
    can refuse the run; lua.py START_SINGLETON records a start that did not happen.
    """
    app.conf.fork_scheduler_max_concurrent = 1
    hooks = WorkerHooks(app)
    hooks._settings = None
    later = Run("sync", S2.isoformat(), "s2", 0.0, True, True, "w@h", overlap="buffer_all")
    redis_client.zadd(KEYS.cap, {"other-entry-run": time.time() * 1e6 + 60e6})
    assert hooks._take_markers(later) == "capped"
    hooks._finish(later)
    redis_client.delete(KEYS.cap)  # the other run ended: the cap is free
    assert redis_client.get(KEYS.running("sync")) is None

    earlier = Run("sync", S1.isoformat(), "s1", 0.0, True, True, "w@h", overlap="buffer_all")
    assert hooks._take_markers(earlier) is None, "S1 refused: a later slot 'started' (capped)"


# -- probes ------------------------------------------------------------------------------------


def test_probe_latest_start_and_a_runtime_entry_added_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Probe (held): a runtime buffer_all entry removed and added again keeps its high-water
    mark (store.py ``_FRESH_FIELDS`` leaves ``hwm``), so the new definition's slots come after
    ``latest_start``; a Manager.update changes nothing of it. A manual run, a backfilled run
    (its overlap header is ``skip``) and a ``buffer_one`` run of an earlier slot are not in the
    order. Checked through ``_take_markers`` with the state the remove/add left."""
    from celery_fork_scheduler import Manager

    app = worker_app(redis_url)
    manager = Manager(app)
    manager.add("sync", "tasks.sync", 60, overlap="buffer_all")
    hooks = WorkerHooks(app)
    later = Run("sync", S3.isoformat(), "s3", 0.0, True, False, "w@h", overlap="buffer_all")
    assert hooks._take_markers(later) is None
    hooks._finish(later)
    manager.remove("sync")
    manager.add("sync", "tasks.sync", 60, overlap="buffer_all")
    manager.update("sync", overlap="buffer_all", description="x")
    state = redis_client.hgetall(KEYS.state("sync"))
    assert b"latest_start" in state  # kept: slots of the new definition come after the hwm
    for run in (
        Run("sync", S1.isoformat(), "m", 0.0, True, False, "w@h", True, "buffer_all"),
        Run("sync", S1.isoformat(), "b", 0.0, True, False, "w@h", overlap="skip"),
        Run("sync", S1.isoformat(), "o", 0.0, True, False, "w@h", overlap="buffer_one"),
    ):
        assert hooks._take_markers(run) is None
        hooks._finish(run)


class ReplyLostOnce:
    """A real client whose next ``eval`` runs on Redis, then loses its reply."""

    def __init__(self, real: redis.Redis) -> None:
        self.real = real
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def eval(self, *args: Any) -> Any:
        reply = self.real.eval(*args)
        if self.armed:
            self.armed = False
            raise redis.TimeoutError("Timeout reading from socket")
        return reply


def test_probe_a_buffer_all_hand_over_whose_reply_was_lost_is_sent_once_in_order(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Probe (held): buffer_all queue [H1, H2]; run A ends and RELEASE's reply is lost (Redis
    handed the marker to H1). The heartbeat asks again: H1 is published once (two more passes
    publish nothing), H2 stays queued; H1 starts (in order: ``latest_start`` below it), ends,
    and hands over H2, which starts too."""
    app = worker_app(redis_url)
    entry = sync_entry("buffer_all")
    redis_client.set(KEYS.running("sync"), "run-a", px=LEASE_S * 1000)
    redis_client.rpush(KEYS.buffered("sync"), held_of(entry, S2), held_of(entry, S3))
    hooks = WorkerHooks(app)
    working = hooks.client
    run_a = Run("sync", S1.isoformat(), "run-a", 0.0, True, False, "w@h", overlap="buffer_all")
    assert hooks._take_markers(run_a) is None  # A starts (latest_start = S1) ...
    hooks._client = ReplyLostOnce(working)
    hooks._finish(run_a)  # ... and ends; the reply of its release is lost
    assert queued_ids(redis_client) == []
    for _ in range(3):
        hooks._beat_hearts(OnePass())  # type: ignore[arg-type]
    h1, h2 = task_id_for("sync", S2), task_id_for("sync", S3)
    assert queued_ids(redis_client) == [h1]
    run_h1 = Run("sync", S2.isoformat(), h1, 0.0, True, False, "w@h", overlap="buffer_all")
    assert hooks._take_markers(run_h1) is None
    hooks._finish(run_h1)
    assert sorted(queued_ids(redis_client)) == sorted([h1, h2])  # each once
    run_h2 = Run("sync", S3.isoformat(), h2, 0.0, True, False, "w@h", overlap="buffer_all")
    assert hooks._take_markers(run_h2) is None
