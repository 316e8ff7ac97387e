"""Adversary round 46: the fixes of round 45 and the ``before_reset`` of round 44 (replacing
policies given back, manual runs, static entries whose state a runtime entry reset).

Each test's docstring names the promise (with its page), the sequence, what happened instead and
where. Every test was found failing by round 46 and fixed: a replacing run not published after
all (given back, its publish refused, a trigger refused by the cap) leaves the latest run sent
(``sent_run``) as the latest; a static entry's restore drops the reset's ``fresh_after``; an
attempt that ends after its retry already started notes no retry waiting (``attempt``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state
from hand_driven_helpers import BrokerBeat as Beat
from hand_driven_helpers import outcomes_by_slot as history

from celery_fork_scheduler import Manager, every, install
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import wait_until

KEYS = Keys("scheduler:")
RUNS_KEY = "adv46:runs"


def second(value: int) -> str:
    return f"2026-03-02T10:00:{value:02}+00:00"


def make_app(redis_url: str, beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    """A beat and worker app on the claims' Redis (broker included): ``adv46.slow`` notes each
    execution in Redis; ``adv46.fails_once`` raises on its first execution only."""
    app = Celery("adv46", broker=redis_url, set_as_current=False)
    settings: dict[str, Any] = {
        "timezone": "UTC",
        "beat_schedule": beat_schedule,
        "fork_scheduler_redis_url": redis_url,
        "fork_scheduler_owner_grace": 0,
        "fork_scheduler_singleton_lease": 5,
        "result_expires": None,
        "broker_connection_retry_on_startup": False,
    }
    app.conf.update({**settings, **conf})

    @app.task(bind=True, name="adv46.slow", shared=False)
    def slow(self: Any, seconds: float = 0.0) -> None:
        client = redis.Redis.from_url(redis_url)
        slot = self.request.get("fork_scheduler_slot")
        client.rpush(RUNS_KEY, json.dumps({"slot": slot, "id": self.request.id}))
        time.sleep(seconds)
        client.close()

    @app.task(bind=True, name="adv46.fails_once", shared=False)
    def fails_once(self: Any) -> None:
        client = redis.Redis.from_url(redis_url)
        first = client.incr("adv46:fails_once") == 1
        client.close()
        if first:
            raise ValueError("boom")

    install(app)
    return app


def executed(client: redis.Redis) -> list[str]:
    """The slots of every execution of ``adv46.slow``, in order."""
    return [json.loads(raw)["slot"] for raw in client.lrange(RUNS_KEY, 0, -1)]


@pytest.fixture
def beats() -> Iterator[list[Beat]]:
    made: list[Beat] = []
    worker_state.revoked.clear()
    yield made
    for beat in made:
        beat.close()
        beat.app.close()
    worker_state.revoked.clear()


# -- 1. two slots of a replacing entry given back in one tick: the published run is dropped ----


def test_two_given_back_slots_in_one_tick_leave_an_unpublished_run_as_the_latest(
    redis_url: str, redis_client: redis.Redis, beats: list[Beat]
) -> None:
    """Promise (docs/redis-layout.md, ``previous_run``): "the one it replaced, which is the
    latest again when the new run is not published after all (given back under the cap, the
    broker unreachable: a run that never starts replaces nothing)". docs/singleton.md, the cap:
    a slot that finds the cap full is skipped, its claim given back; guarantees.md promise 1
    (every slot published or reported) and docs/guarantees.md "A replica wakes up late":
    slots no older than the catch-up grace "are each published" (a burst in one tick).

    Sequence: ``fork_scheduler_max_concurrent=1``, entry ``e`` (``overlap="cancel_other"``,
    every second). Slot 1 (run A) is published and takes the one place; it waits in the queue.
    The replica then ticks once 2 s later (a short stall within the grace): slots 2 (B) and 3
    (C) are claimed in the same tick -- B's claim writes ``latest_run=B, previous_run=A``, C's
    ``latest_run=C, previous_run=B`` -- and both are then refused by the cap and given back
    (``MARK_SKIPPED`` in slot order). The worker then starts A.

    What happens: B's give-back finds ``latest_run`` = C and leaves it; C's puts back its
    ``previous_run``, B -- a run that was itself given back and never published. A starts,
    ``TAKE_OVER`` answers "replaced" (latest_run = B) and A is not executed
    (``skipped:replaced``): three slots, no run at all. Expected: A executes (B and C never
    ran; they replace nothing). Where: backends/lua.py ``MARK_SKIPPED`` (restores one step of
    ``previous_run``, which may name a claim of the same batch given back just before) with
    ``_CLAIM_BODY`` (``previous_run`` is the latest claim, not the latest run published).
    """
    app = make_app(
        redis_url,
        {
            "e": {
                "task": "adv46.slow",
                "schedule": every(1).seconds,
                "args": [0.1],
                "overlap": "cancel_other",
            }
        },
        fork_scheduler_max_concurrent=1,
    )
    beat = Beat(app)
    beats.append(beat)
    beat.run_for(1)  # slot 1 published: it holds the one place under the cap
    assert redis_client.llen("celery") == 1
    beat.clock.advance(2)
    beat.scheduler.tick()  # slots 2 and 3 due in one tick (a burst within the grace): capped
    assert history(redis_client)[second(2)] == "skipped:capped"
    assert history(redis_client)[second(3)] == "skipped:capped"
    assert redis_client.llen("celery") == 1  # only slot 1 was ever published
    latest = redis_client.hget(KEYS.state("e"), "latest_run")
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
        wait_until(
            lambda: history(redis_client).get(second(1), "sent") != "sent",
            timeout=15,
            what="slot 1's run to end",
        )
        time.sleep(0.3)
    assert executed(redis_client) == [second(1)], (
        f"slot 1 (the only run published) was not executed: latest_run was {latest!r}, "
        f"history {history(redis_client)}"
    )


# -- 2. a publish that raised (nothing sent) still replaces the run before it --------------------


def test_a_replacing_slot_whose_publish_raised_still_replaces_the_run_before_it(
    redis_url: str, redis_client: redis.Redis, beats: list[Beat]
) -> None:
    """Promise (docs/redis-layout.md, ``previous_run``): the replaced run "is the latest again
    when the new run is not published after all ...: a run that never starts replaces
    nothing". docs/guarantees.md: a message that certainly did not leave is "recorded and the
    slot is not published" (pipeline.py ``_not_sent``: "A message that certainly did not
    leave"); guarantees.md promise 1 (every slot run or reported).

    Sequence: entry ``e`` (``overlap="cancel_other"``, every second, lazy ``args``). Slot 1
    (run A) is published and waits in the queue. Slot 2 is won; its message cannot be
    encoded (its lazy args return a value the JSON serializer refuses: ``EncodeError``, not a
    transient broker error), so nothing is sent and ``RECORD_FAILURE`` records it ``failed``.
    The worker then starts A.

    What happens: the claim of slot 2 wrote ``latest_run`` = slot 2's id and
    ``RECORD_FAILURE`` leaves it there (only ``MARK_SKIPPED`` puts ``previous_run`` back), so
    A is "replaced" at its start (``skipped:replaced``) by a run that was never sent: neither
    slot runs. Expected: A executes. Where: backends/lua.py ``RECORD_FAILURE`` (no
    ``latest_run`` / ``previous_run`` handling, unlike ``MARK_SKIPPED``).
    """
    calls = {"n": 0}

    def lazy_args() -> list[Any]:
        calls["n"] += 1
        # slot 2's arguments cannot be serialized (a value the JSON serializer refuses)
        return [0.1] if calls["n"] != 2 else [object()]

    app = make_app(
        redis_url,
        {
            "e": {
                "task": "adv46.slow",
                "schedule": every(1).seconds,
                "args": lazy_args,
                "overlap": "cancel_other",
            }
        },
    )
    beat = Beat(app)
    beats.append(beat)
    beat.run_for(1)  # slot 1 published; it waits in the queue
    beat.clock.advance(1)
    beat.scheduler.tick()  # slot 2 won; its publish raises: nothing sent
    print(history(redis_client), redis_client.hgetall(KEYS.state("e")))
    assert redis_client.llen("celery") == 1
    latest = redis_client.hget(KEYS.state("e"), "latest_run")
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
        wait_until(
            lambda: history(redis_client).get(second(1), "sent") != "sent",
            timeout=15,
            what="slot 1's run to end",
        )
        time.sleep(0.3)
    assert executed(redis_client) == [second(1)], (
        f"slot 1 (the only run published) was not executed: latest_run was {latest!r}, "
        f"history {history(redis_client)}"
    )


# -- 3. a manual run of a replacing entry refused by the cap replaces the run waiting ----------


def test_a_trigger_refused_by_the_cap_replaces_the_scheduled_run_waiting_in_the_queue(
    redis_url: str, redis_client: redis.Redis, beats: list[Beat]
) -> None:
    """Promise (docs/redis-layout.md, ``previous_run``): "a run that never starts replaces
    nothing". docs/singleton.md: a run waiting in the broker past the lease takes its marker
    again when it starts (SET NX); "A **triggered** run ... that gets the marker is the
    entry's latest run too"; ``Manager.trigger``: "the concurrency cap (``"capped"``) ... After
    any failure to send, the marker and the place are given back at once".

    Sequence: ``fork_scheduler_max_concurrent=1``, lease 0.5 s, entry ``e``
    (``overlap="cancel_other"``, hourly). Slot 11:00 (run A) is published and waits in the
    broker past the lease (its marker and place expire). Another entry's manual run takes the
    free place; ``Manager.trigger("e")`` finds the marker free, takes it, writes itself as
    ``latest_run``, then is refused by the cap (``skipped="capped"``, nothing sent, marker
    given back). The other run ends (its place is free). A starts on a worker.

    What happens: ``TAKE_OVER`` answers "replaced" -- ``latest_run`` still names the manual run
    that was never sent -- so A is not executed (``skipped:replaced``); the slot is lost for a
    run that does not exist. Expected: A executes (marker free, cap has room). Where:
    manager.py ``Manager.trigger`` / ``Manager._give_back`` (``latest_run`` written before the
    cap is asked, never put back; no ``previous_run``).
    """
    from celery_fork_scheduler.worker import Run, WorkerHooks

    app = make_app(
        redis_url,
        {
            "e": {
                "task": "adv46.slow",
                "schedule": every(1).hours,
                "args": [0.1],
                "overlap": "cancel_other",
            },
            "f": {"task": "adv46.slow", "schedule": every(1).hours, "args": [0.1]},
        },
        fork_scheduler_max_concurrent=1,
        fork_scheduler_singleton_lease=0.5,
    )
    beat = Beat(app)
    beats.append(beat)
    beat.clock.set(datetime.fromisoformat("2026-03-02T10:59:59.800+00:00"))
    beat.run_for(0.5)  # e's slot 11:00 published (run A): it waits in the queue
    slot_a = datetime.fromisoformat("2026-03-02T11:00:00+00:00")
    run_a = task_id_for("e", slot_a)
    assert history(redis_client) == {slot_a.isoformat(): "sent"}
    time.sleep(0.7)  # A waits in the broker past the lease: its marker and place expire
    manager = Manager(app, clock=beat.clock)
    f = manager.trigger("f")  # another entry's manual run takes the free place
    assert f.task_id and not f.skipped
    manual = task_id_for("e", beat.clock())
    t = manager.trigger("e")  # the marker is free; the cap is full: refused, never sent
    assert t.skipped == "capped"
    redis_client.zrem(KEYS.cap, f.task_id)  # f's run ends: its place is free again
    hooks = WorkerHooks(app)
    run = Run(
        "e", slot_a.isoformat(), run_a, time.monotonic(), True, True, "w@h", overlap="cancel_other"
    )
    reason = hooks._take_markers(run)
    assert reason is None, (
        f"run A (scheduled, published) may not run ({reason}): latest_run is "
        f"{redis_client.hget(KEYS.state('e'), 'latest_run')!r}, the manual run the cap refused "
        f"({manual!r}: never sent)"
    )


# -- 4. a static entry whose state a runtime entry reset is not paused by its own run's failure -


def test_a_static_entrys_failed_run_does_not_pause_it_after_a_runtime_entry_reset_its_state(
    redis_url: str, redis_client: redis.Redis, beats: list[Beat], layout: str
) -> None:
    """Promise (docs/manager.md): "A runtime entry never replaces a static one of the same name,
    even when it was written by an app that does not know the static entry: beat keeps the
    static entry"; docs/redis-layout.md ``before_reset``: a replica running the static entry
    "puts them back at its next claim" (the static entry keeps its own state).
    docs/schedules.md "Pause on failure": the worker that sees a run fail for good "pauses the
    entry for the whole cluster"; the exceptions are a removed runtime entry and an entry
    "added again under its name (a run of the removed definition fails the new one nothing)".

    Sequence: static entry ``x`` (``pause_on_failure=True``, every second). Slot 1 is
    published; its run waits in the queue. An app that does not know ``x`` adds a runtime entry
    ``x`` (beat skips it: the static entry wins); the reset keeps the static fields in
    ``before_reset`` and writes ``fresh_after`` = slot 1. The static entry's next claim (slot 2)
    puts ``before_reset`` back. Then slot 1's run fails for good. Both runtime-store paths.

    What happens: the entry is not paused (slot 2 and every later slot keep running):
    ``RECORD_OUTCOME`` takes slot 1 (<= ``fresh_after``) for a run of a removed definition,
    but nothing was removed -- it is the static entry's own run, and its state was put back.
    (The same stale ``fresh_after`` keeps ``give_back_run`` from giving such a run back, one
    run too many counted towards ``max_runs``.) Expected: paused, as without the runtime
    write. Where: store.py ``_KEPT_FIELDS`` / ``PUT_MANY`` / ``RuntimeStore._start_afresh``
    (``fresh_after`` is written by the reset) and backends/lua.py ``_CLAIM_BODY``'s restore
    (puts the kept fields back but leaves the ``fresh_after`` the reset wrote).
    """
    app = make_app(
        redis_url,
        {
            "x": {
                "task": "adv46.fails_once",
                "schedule": every(1).seconds,
                "pause_on_failure": True,
            }
        },
    )
    beat = Beat(app)
    beats.append(beat)
    beat.run_for(1)  # slot 1 published: its run waits in the queue
    assert history(redis_client, "x") == {second(1): "sent"}
    unaware = make_app(redis_url, {})  # an app that does not know the static entry
    try:
        Manager(unaware).add("x", "adv46.slow", every(1).hours)
    finally:
        unaware.close()
    beat.run_for(1)  # slot 2: the static entry's claim takes its state back (before_reset)
    assert history(redis_client, "x")[second(2)] == "sent"
    assert not redis_client.hexists(KEYS.state("x"), "before_reset")
    with start_worker(app, pool="solo", perform_ping_check=False):
        wait_until(
            lambda: int(redis_client.hget(KEYS.state("x"), "errors") or 0) >= 1,
            timeout=15,
            what="slot 1's run to fail",
        )
    state = redis_client.hgetall(KEYS.state("x"))
    assert state.get(b"paused") == b"1", (
        "the static entry's own run failed for good and did not pause it: the runtime entry's "
        f"reset left fresh_after={state.get(b'fresh_after')!r} on its state; history "
        f"{history(redis_client, 'x')}"
    )


# -- 5. a retry that started before its first attempt's end was noted is taken for waiting ------


def test_a_retry_already_executing_is_revoked_as_waiting_and_loses_its_cap_place(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise (docs/singleton.md, cancel_other): only a run "**waiting for a retry**" is
    taken over at once ("the new run takes the marker at once and revokes it; the retry never
    starts"); a run **executing** is revoked and waited for: "The runs never overlap". The cap
    (docs/singleton.md): a run keeps its place until its last attempt ends.

    Sequence (``fork_scheduler_max_concurrent=2``, overlap ``cancel_other``, WorkerHooks
    driven directly on the real Redis): run R starts on worker 1 and calls
    ``self.retry(countdown=0)``: Celery sends the retry message inside the task body, and
    worker 2 takes and starts it (``TAKE_OVER``: R holds its own marker, code 1) before worker
    1's ``task_postrun`` (state ``RETRY``) runs ``_note_retrying``, which then writes
    ``retrying=R`` while R's retry executes. The next slot's run N starts on worker 3.

    What happens: ``TAKE_OVER`` sees the holder equal to ``retrying`` and answers code 4: N
    takes the marker and executes at once; ``_take_over`` revokes R without terminating it
    (a no-op for an executing run under cancel_other) and removes R's place from the cap. R's
    retry and N execute together (an overlap of a singleton), and the cap counts one run
    fewer than execute (a third run may take R's place). Expected: N waits for R (code 3) and R
    keeps its place. Where: worker.py ``WorkerHooks.on_postrun`` / ``_note_retrying`` (noted
    unconditionally, after the retry may have started) and ``_take_over`` code 4 (trusts
    ``retrying``; the new ``zrem`` of the holder's place).
    """
    from celery_fork_scheduler.worker import Run, WorkerHooks

    app = make_app(redis_url, {}, fork_scheduler_max_concurrent=2, fork_scheduler_replace_wait=0.3)
    revoked: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        app.control, "revoke", lambda task_id, **kwargs: revoked.append((task_id, kwargs))
    )
    try:
        first, other, third = WorkerHooks(app), WorkerHooks(app), WorkerHooks(app)
        lease_us = 60_000_000
        now_us = int(redis_client.time()[0]) * 1_000_000
        # R (slot 1) was claimed, published with a place and started on worker 1
        redis_client.set(KEYS.running("e"), "R", px=60_000)
        redis_client.hset(KEYS.state("e"), "latest_run", "R")
        redis_client.zadd(KEYS.cap, {"R": now_us + lease_us})
        run_r = Run("e", second(1), "R", time.monotonic(), True, True, "w1", overlap="cancel_other")
        assert first._take_markers(run_r) is None
        # R calls self.retry(countdown=0): the retry message leaves inside the task body, and
        # worker 2 starts it before worker 1's task_postrun (state RETRY) notes "retrying"
        retry_r = Run(  # its second attempt (request.retries 1: on_prerun's run.attempt)
            "e", second(1), "R", time.monotonic(), True, True, "w2", overlap="cancel_other",
            attempt=1,
        )  # fmt: skip
        assert other._take_markers(retry_r) is None  # R's retry executes on worker 2
        first._note_retrying(run_r)  # worker 1's postrun of the first attempt
        # slot 2's run N is claimed, published with the other place, and starts on worker 3
        redis_client.hset(KEYS.state("e"), "latest_run", "N")
        redis_client.zadd(KEYS.cap, {"N": now_us + lease_us})
        run_n = Run("e", second(2), "N", time.monotonic(), True, True, "w3", overlap="cancel_other")
        reason = third._take_markers(run_n)
        places = [_id.decode() for _id in redis_client.zrange(KEYS.cap, 0, -1)]
        assert reason is not None or "R" in places, (
            f"N executes ({reason}) while R's retry still executes: R was revoked {revoked} "
            f"as if it waited, and its place taken off the cap (places now {places})"
        )
    finally:
        app.close()
