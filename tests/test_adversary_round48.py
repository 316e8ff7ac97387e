"""Adversary round 48: the fixes of rounds 46 and 47 (``sent_run`` / ``_UNREPLACE`` for the
replacing policies, ``attempt`` / ``NOTE_RETRYING``, backfill's task-id matching and definition
version, ``Manager.trigger``'s new order).

Each test's docstring names the promise (with its page), the sequence, what happened instead and
where. Found failing by round 48: a backfill sent again a slot whose publisher died after its
fence (its ``skipped:in_flight`` item has no task id) and a burst's later slot given back made
the earlier one published lose to a finished run; both fixed. Three are documented limits,
strict xfails (docs/singleton.md, docs/redis-layout.md). Claims, markers and history are on a
real Redis; the schedule runs on a fake clock; the
worker side is driven through the real ``WorkerHooks``, each run's start and end by hand.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from hand_driven_helpers import HandDrivenWorker as Worker
from hand_driven_helpers import RecordingBeat as Beat
from hand_driven_helpers import queued
from replica_helpers import START

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

KEYS = Keys("scheduler:")
#: The task of the entries the hand-driven worker runs.
TASK = "adv48.job"
START_AT = datetime.fromisoformat(START).replace(microsecond=0)  # 10:00:00 UTC


def at(seconds: float) -> datetime:
    """10:00:00 plus ``seconds``."""
    return START_AT + timedelta(seconds=seconds)


def us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def make_app(redis_url: str, beat_schedule: dict[str, Any], **conf: Any) -> Celery:
    """Beat, Manager and worker of one app; the broker is the claims' Redis (queue ``celery``)."""
    app = Celery("adv48", broker=redis_url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        beat_schedule=beat_schedule,
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_owner_grace=0,
        result_expires=None,
        broker_connection_retry_on_startup=False,
        **conf,
    )

    @app.task(name="adv48.job", shared=False)
    def job(*args: Any, **kwargs: Any) -> None:
        """The task of every entry."""

    return app


class Killed(BaseException):
    """The replica's process dies here (SIGKILL): nothing after it runs."""


class KilledAfterPublishing(RecordingPublisher):
    """Publishes (records) the slots of ``entry`` at ``slot``, then the process is killed before
    the publish returns: the message left, the claim stays fenced, nothing is recorded sent."""

    def __init__(self, entry: str, slot: datetime) -> None:
        super().__init__()
        self.kill_at = (entry, slot)

    def publish_many(self, occurrences: Sequence[Occurrence]) -> list[Exception | None]:
        errors = super().publish_many(occurrences)
        if any((o.entry, o.slot) == self.kill_at for o in occurrences):
            raise Killed()
        return errors


@pytest.fixture
def apps() -> Iterator[list[Celery]]:
    made: list[Celery] = []
    yield made
    for app in made:
        app.close()


@pytest.fixture
def beats() -> Iterator[list[Beat]]:
    made: list[Beat] = []
    yield made
    for beat in made:
        with contextlib.suppress(Exception):
            beat.scheduler.close()


def history(client: redis.Redis, name: str) -> list[dict[str, Any]]:
    """The entry's history items, oldest first."""
    return [json.loads(raw) for raw in reversed(client.lrange(KEYS.history(name), 0, -1))]


# -- 1. a trigger just after a slot came due outranks the slot's run once a later run is given back


@pytest.mark.xfail(
    strict=True,
    reason="documented limit (docs/singleton.md): a trigger counts as newer than a slot due "
    "before it but sent after it",
)
def test_a_scheduled_run_claimed_after_a_trigger_is_replaced_by_the_finished_trigger(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], beats: list[Beat]
) -> None:
    """Promise (docs/redis-layout.md, ``sent_run``): "the latest of them sent: the latest again
    when a later one is not published after all"; ``latest_run``: "the one it replaced ... is
    the latest again when the new run is not published after all (given back under the cap,
    the broker unreachable: a run that never starts replaces nothing)". docs/singleton.md,
    cancel_other: the newest run wins; guarantees.md promise 1 (every slot run or reported).

    Sequence: ``fork_scheduler_max_concurrent=1``; entry ``e`` (``cancel_other``, every 10 s).
    Slot 10:00:10 falls due; 0.1 s later, before beat's next tick claims it, an operator
    triggers ``e`` (run M: marker, the one place, ``latest_run=M``,
    ``sent_run="<10:00:10.1> M"``). M starts and ends on a worker (marker and place freed).
    Beat's tick then claims slot 10:00:10 (run S): ``latest_run=S``, published, the one place;
    ``MARK_SENT`` keeps ``sent_run`` = M (its slot, the trigger instant, is later than S's).
    S waits in the broker. Slot 10:00:20 (run T) is claimed (``latest_run=T``) and refused by
    the cap (``skipped:capped``, given back: ``_UNREPLACE``). Then S starts.

    What happens: T's give-back makes M -- a manual run that already finished -- the latest
    run again, so S is "replaced" at its start (``skipped:replaced``): T capped because S held
    the place, S refused because T was given back; nothing runs. Expected: S executes (it was
    claimed and sent after M: the latest run sent). Where: backends/lua.py ``MARK_SENT``
    (``sent_run`` kept when its slot is later: a trigger's "slot" is its trigger instant, not
    the order of claims) with manager.py ``Manager.trigger`` (writes its instant) and
    ``_UNREPLACE``.
    """
    app = make_app(
        redis_url,
        {"e": {"task": "adv48.job", "schedule": every(10).seconds, "overlap": "cancel_other"}},
        fork_scheduler_max_concurrent=1,
    )
    apps.append(app)
    clock = FakeClock(START)
    beat = Beat(app, clock)
    beats.append(beat)
    worker = Worker(app, TASK)
    manager = Manager(app, clock=clock)
    beat.run_until(at(9.8))
    assert beat.publisher.occurrences == []
    clock.set(at(10.1))  # slot 10:00:10 is due; beat's next tick is a moment away
    manual = manager.trigger("e")
    assert manual.task_id is not None
    [message] = queued(redis_client)
    assert worker.start(manual.task_id, message["headers"])
    worker.end(manual.task_id)

    beat.run_until(at(10.5))  # the slot's run S is claimed and published
    s_id, s_headers = beat.headers("e", at(10))
    beat.run_until(at(20.5))  # T is claimed, then refused by the cap (S holds the place)
    outcomes = {item["slot"]: item["outcome"] for item in history(redis_client, "e")}
    assert outcomes[us(at(20))] == "skipped:capped"

    latest = redis_client.hget(KEYS.state("e"), "latest_run")
    assert worker.start(s_id, s_headers), (
        f"run S of slot 10:00:10 (claimed and sent after the trigger, the latest run sent) was "
        f"not executed: latest_run={latest!r} is the trigger {manual.task_id!r}, which had "
        f"already finished; history {[i['outcome'] for i in history(redis_client, 'e')]}"
    )


# -- 2. a run whose publisher died after sending it is not the latest sent: an older one revives


@pytest.mark.xfail(
    strict=True,
    reason="documented limit (docs/singleton.md): a run whose publisher died after its fence "
    "is not known as sent",
)
def test_a_run_sent_by_a_replica_killed_mid_publish_is_replaced_by_the_run_before_it(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], beats: list[Beat]
) -> None:
    """Promise (docs/redis-layout.md, ``sent_run``): the latest run sent "is the latest run
    again when a later one is not published after all (given back under the cap ...: a run
    that never starts replaces nothing)". docs/guarantees.md, failure table: "A replica is
    **killed** during the publish itself, after the fence ... The message may or may not have
    reached the broker; no replica publishes it again" -- a message that did reach the broker
    runs once ("The task arrived once or not at all"). docs/singleton.md: "A run that waits in
    the broker behind its replacement is dropped when it starts (it is not the latest run)" --
    only a *later* run replaces it.

    Sequence: ``fork_scheduler_max_concurrent=1``; entry ``e`` (``cancel_other``, every 10 s);
    the fence path (the broker is not the claims' Redis). Replica A publishes slot 10:00:10
    (run R1, ``sent_run`` = R1); R1 runs and ends on a worker. At 10:00:20 A claims, fences and
    sends run R2 (it takes the marker and the one place), and is killed before recording it
    sent. Replica B goes on: slot 10:00:30 (run R3) is claimed (``latest_run=R3``) and refused
    by the cap (R2 holds the place): given back. Then R2 starts on a worker.

    What happens: R3's give-back (``_UNREPLACE``) makes ``sent_run`` -- R1, which finished long
    ago -- the latest run, since R2 was never recorded by ``MARK_SENT``; R2 is "replaced" at its
    start (``skipped:replaced``). R2 arrived and is dropped, R3 capped: no run at all, in favour
    of a finished one. Before round 47's change the give-back restored the claim before R3 (R2).
    Expected: R2 executes. Where: backends/lua.py ``_UNREPLACE`` / ``MARK_SENT`` (only a run
    recorded sent by its own publisher becomes ``sent_run``; a fenced claim whose publisher died
    is never one) with ``_CLAIM_BODY`` (no record of the latest claim before it any more).
    """
    app = make_app(
        redis_url,
        {"e": {"task": "adv48.job", "schedule": every(10).seconds, "overlap": "cancel_other"}},
        fork_scheduler_max_concurrent=1,
    )
    apps.append(app)
    clock = FakeClock(START)
    a = Beat(app, clock, "replica-a", KilledAfterPublishing("e", at(20)))
    beats.append(a)
    worker = Worker(app, TASK)
    a.run_until(at(10.5))
    r1, r1_headers = a.headers("e", at(10))
    assert worker.start(r1, r1_headers)
    worker.end(r1)
    with pytest.raises(Killed):
        a.run_until(at(20.5))  # R2 sent, then the replica is killed before recording it
    r2, r2_headers = a.headers("e", at(20))
    beats.remove(a)  # (dead: never closed)

    b = Beat(app, clock, "replica-b")
    beats.append(b)
    b.run_until(at(30.5))
    outcomes = {item["slot"]: item["outcome"] for item in history(redis_client, "e")}
    assert outcomes[us(at(30))] == "skipped:capped"
    assert b.publisher.occurrences == []

    state = redis_client.hgetall(KEYS.state("e"))
    assert worker.start(r2, r2_headers), (
        f"run R2 of 10:00:20 (sent; the only run waiting) was not executed: latest_run="
        f"{state.get(b'latest_run')!r} is R1 ({r1!r}, finished), sent_run="
        f"{state.get(b'sent_run')!r}; history {[i['outcome'] for i in history(redis_client, 'e')]}"
    )


# -- 3. backfill no longer sees that a killed publisher's slot may have left ----------------------


def test_backfill_sends_again_a_slot_whose_publisher_died_after_sending_it(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], beats: list[Beat]
) -> None:
    """Promise (docs/manager.md, "Backfill" outcomes): ``skipped:in_flight`` -- "a backfill
    claimed it and never recorded its publish ..., **or the history says the scheduler's
    publisher died after fencing it: the message may have left**"; the skips ``buffered``,
    ``uncertain`` and ``in_flight`` "are refused too, as maybe" published. Backfill publishes
    only slots "that were never published" (at most once).

    Sequence: entry ``e`` (``allow``, every 10 s), the fence path. Replica A fences and sends
    slot 10:00:10 and is killed before recording it sent (the message is at the broker). Replica
    B goes on publishing the later slots. A day later (the claim's record aged past
    ``PENDING_CLAIM_MAX_AGE``) B's next claim drops the fenced claim and writes the history item
    ``skipped:in_flight`` for 10:00:10 (``_CLAIM_BODY``: task id ``""``). The operator backfills
    10:00:10.

    What happens: the slot is ``sent`` again -- a second message of 10:00:10, with the same task
    id: ``BACKFILL_CLAIM`` now ignores history items whose ``task_id`` is not the slot's, and
    the in-flight item written when the claim is dropped carries ``task_id=""``. Expected:
    ``skipped:in_flight``, nothing sent. Where: backends/lua.py ``BACKFILL_CLAIM`` (``item.task_id
    == nil or item.task_id == ARGV[2]``) with ``_CLAIM_BODY`` (``record(fields[i], owner, '',
    'skipped:in_flight', ...)``).
    """
    app = make_app(redis_url, {"e": {"task": "adv48.job", "schedule": every(10).seconds}})
    apps.append(app)
    clock = FakeClock(START)
    a = Beat(app, clock, "replica-a", KilledAfterPublishing("e", at(10)))
    beats.append(a)
    with pytest.raises(Killed):
        a.run_until(at(10.5))
    assert a.publisher.fired("e") == [at(10).isoformat()]  # the message left
    beats.remove(a)
    b = Beat(app, clock, "replica-b")
    beats.append(b)
    b.run_until(at(30.5))
    # a day passes for the fenced claim's record (Redis TIME: its claimed_at is aged)
    pending = KEYS.entry_keys("e")[1]
    [(field, raw)] = redis_client.hgetall(pending).items()
    owner, claimed_at, flag = raw.decode().split("|")
    assert flag == "publishing"
    aged = int(claimed_at) - 86_400_000_000 - 1_000_000
    redis_client.hset(pending, field, f"{owner}|{aged}|{flag}")
    b.run_until(at(40.5))  # the next claim drops it: history "skipped:in_flight"
    assert not redis_client.hexists(pending, field)
    items = [i for i in history(redis_client, "e") if i["slot"] == us(at(10))]
    assert [i["outcome"] for i in items] == ["skipped:in_flight"]

    manager = Manager(app, clock=clock)
    results = manager.backfill("e", at(10), at(10), rate=1000)
    assert [r.outcome for r in results] == ["skipped:in_flight"], (
        f"backfill says {[(r.outcome, r.detail) for r in results]} for a slot whose message "
        f"may have left (history: {items}); broker now holds {len(queued(redis_client))} "
        "message(s) of it"
    )


# -- 4. a burst: the slot given back under the cap revives the finished run over the one sent ----


def test_a_burst_whose_later_slot_is_capped_makes_the_earlier_published_run_replaced(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], beats: list[Beat]
) -> None:
    """Promise (docs/redis-layout.md, ``sent_run``): "the latest of them sent, which is the
    latest run again when a later one is not published after all (given back under the cap
    ...: a run that never starts replaces nothing)". docs/singleton.md, the cap: a slot that
    finds the cap full is skipped, its claim given back; docs/guarantees.md "A replica wakes up
    late": slots no older than the catch-up grace "are each published" (a burst in one tick).

    Sequence: ``fork_scheduler_max_concurrent=1``; entry ``e`` (``cancel_other``, every
    second). Slot 1 (run X1) is published, runs and ends (``sent_run`` = X1, its place freed).
    The replica then ticks once 2 s later (a short stall within the grace): slots 2 (X2) and
    3 (X3) are claimed in one tick (``latest_run`` = X3); the cap grants X2 the one place and
    refuses X3, which is given back first (``MARK_SKIPPED``: ``_UNREPLACE`` makes ``sent_run``,
    X1, the latest run), then X2 is published (``MARK_SENT``: ``sent_run`` = X2, but
    ``latest_run`` stays X1). X2 starts on a worker.

    What happens: ``TAKE_OVER`` reads ``latest_run`` = X1 (a run that finished) and X2 is
    "replaced" (``skipped:replaced``): of the two slots of the burst one is capped and the
    other, published and holding the only place, never executes. Expected: X2 executes.
    Where: backends/lua.py ``_UNREPLACE`` (falls back to the latest run *recorded* sent, while
    an earlier claim of the same batch is still being published) and ``MARK_SENT`` (records
    ``sent_run`` but never makes the run it records the latest again); scheduler.py
    ``_apply_cap`` gives back before ``pipeline.send`` records.
    """
    app = make_app(
        redis_url,
        {"e": {"task": "adv48.job", "schedule": every(1).seconds, "overlap": "cancel_other"}},
        fork_scheduler_max_concurrent=1,
    )
    apps.append(app)
    clock = FakeClock(START)
    beat = Beat(app, clock)
    beats.append(beat)
    worker = Worker(app, TASK)
    beat.run_until(at(1.5))
    x1, x1_headers = beat.headers("e", at(1))
    assert worker.start(x1, x1_headers)
    worker.end(x1)
    clock.set(at(3.2))
    beat.scheduler.tick()  # slots 2 and 3 in one tick: 2 gets the place, 3 is capped
    outcomes = {item["slot"]: item["outcome"] for item in history(redis_client, "e")}
    assert outcomes[us(at(2))] == "sent"
    assert outcomes[us(at(3))] == "skipped:capped"
    x2, x2_headers = beat.headers("e", at(2))

    state = redis_client.hgetall(KEYS.state("e"))
    assert worker.start(x2, x2_headers), (
        f"run X2 of slot 2 (published, holding the only place) was not executed: latest_run="
        f"{state.get(b'latest_run')!r} is X1 ({x1!r}, finished); sent_run="
        f"{state.get(b'sent_run')!r}"
    )


# -- 5. a static entry's pause is lost to a remove and add by an app that does not know it -------


@pytest.mark.xfail(
    strict=True,
    reason="documented limit (docs/redis-layout.md, before_reset): a re-add after a removal "
    "keeps nothing",
)
def test_a_paused_static_entry_runs_again_after_an_unaware_app_removes_and_adds_its_name(
    redis_url: str, redis_client: redis.Redis, apps: list[Celery], beats: list[Beat], layout: str
) -> None:
    """Promise (docs/manager.md): "A runtime entry never replaces a static one of the same name,
    even when it was written by an app that does not know the static entry: beat keeps the
    static entry"; docs/redis-layout.md ``before_reset``: the reset keeps the fields it clears
    and a replica running the static entry "puts them back at its next claim" (the static entry
    keeps its own state: its pause, its runs). A pause is "for every replica" until resumed.

    Sequence (both runtime-store paths): static entry ``x`` (every 10 s) is paused by the
    operator. An app that does not know ``x`` (a tenant sync) adds a runtime entry ``x``: the
    reset keeps ``paused`` in ``before_reset``; the static entry's next claim puts it back
    (slot skipped ``paused``). The same app later removes ``x`` (the state gets ``removed``) and
    adds it again (``remove_by_tag`` + ``add_many``). Beat ticks on.

    What happens: the re-add sees ``removed`` and keeps nothing ("a name removed as a runtime
    entry was not a static entry's"), then clears ``paused`` with the other fresh fields; the
    static entry's next claim finds no ``before_reset`` and publishes: the paused static entry
    runs again, nobody resumed it. Expected: still paused (slots skipped ``paused``). Where:
    store.py ``PUT_MANY`` / ``RuntimeStore._start_afresh`` (``removed`` taken to mean the state
    is a runtime entry's, though the removal was of the unaware app's runtime entry written over
    the static entry's state). (Code of round 44 / bb0215c, not of the latest commit; the
    latest commit's restore only runs when ``before_reset`` exists.)
    """
    app = make_app(redis_url, {"x": {"task": "adv48.job", "schedule": every(10).seconds}})
    apps.append(app)
    clock = FakeClock(START)
    beat = Beat(app, clock)
    beats.append(beat)
    beat.run_until(at(10.5))
    assert beat.publisher.fired("x") == [at(10).isoformat()]
    Manager(app, clock=clock).pause("x", note="maintenance")
    beat.run_until(at(20.5))
    unaware = make_app(redis_url, {})
    apps.append(unaware)
    tenants = Manager(unaware, clock=clock)
    tenants.add("x", "adv48.job", "every 1 hour", tags=["tenants"])
    beat.run_until(at(30.5))  # the static entry's claim puts its state back: still paused
    outcomes = {item["slot"]: item["outcome"] for item in history(redis_client, "x")}
    assert outcomes[us(at(30))] == "skipped:paused"
    tenants.remove_by_tag("tenants")
    tenants.add("x", "adv48.job", "every 1 hour", tags=["tenants"])
    beat.run_until(at(40.5))
    outcomes = {item["slot"]: item["outcome"] for item in history(redis_client, "x")}
    state = redis_client.hgetall(KEYS.state("x"))
    assert outcomes[us(at(40))] == "skipped:paused", (
        f"the paused static entry 'x' ran slot 10:00:40 ({outcomes[us(at(40))]}) after an app "
        f"that does not know it removed and added a runtime 'x': paused={state.get(b'paused')!r}"
    )
