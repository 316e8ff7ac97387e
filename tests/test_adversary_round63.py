"""Adversary round 63: round 62's changes (digest-tagged keys of unnamed ``add_periodic_task``
entries, ``BeatLazyFunc`` items, tzinfo zones, refused schedule subclasses, backfill WAIT).

Every test here was found failing by round 63 and fixed with this file; each docstring tells
the scenario as it failed.

Every test here FAILS on HEAD; each docstring gives the scenario, the promise broken and the
cause as read in the code. Real Redis only (the session's ``redis_url``); beat is driven on a
``FakeClock``; Celery's beat is the reference where there is one (round 61's helpers).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from celery.beat import BeatLazyFunc
from replica_helpers import make_app, make_scheduler
from test_adversary_round61 import broker_url  # noqa: F401  (a fixture)

from celery_fork_scheduler import ConfigError, install
from celery_fork_scheduler.keys import Keys, entry_tag
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

UTC = timezone.utc
KEYS = Keys("scheduler:")


def _failing() -> str:
    raise ValueError("token service down")


# -- 1. Manager.trigger of a singleton entry whose BeatLazyFunc raises ------------------------


def test_trigger_whose_beat_lazy_func_raises_gives_back_the_singleton_marker_and_cap_place(
    redis_url: str, broker_url: str  # noqa: F811
) -> None:
    """Scenario: a static singleton entry ``{"task": "proj.sync", "schedule": 30.0,
    "singleton": True, "args": [BeatLazyFunc(fetch_token)]}`` under
    ``fork_scheduler_max_concurrent = 5``; ``fetch_token`` raises (its service is down).
    ``manager.trigger("e")`` (or ``celery schedule trigger e``).

    Promise broken: docs/manager.md, Triggering: "After this or any other failure to send, its
    singleton marker and place under the cap are given back at once (they do not block the
    entry for a lease)"; "``trigger`` never sends a run it then reports as failed".

    What happens: ``trigger`` raises the ``ValueError`` (nothing was sent) and leaves the
    entry's running marker and its place under the cap held for the whole
    ``fork_scheduler_singleton_lease`` (60 s): every scheduled slot meanwhile is skipped
    ``busy``, and another trigger says ``skipped="busy"``.

    Cause: ``manager.py:Manager.trigger`` takes the marker (``SET NX``) and the cap place, then
    calls ``build_occurrence`` -- which calls the ``BeatLazyFunc`` items
    (``lazy_args.LazyItems``) -- *before* the ``try`` whose ``except`` runs ``_give_back``.
    """
    definition = {
        "task": "proj.sync",
        "schedule": 30.0,
        "singleton": True,
        "args": [BeatLazyFunc(_failing)],
    }
    app = make_app(
        redis_url, {"e": definition}, broker_url=broker_url, fork_scheduler_max_concurrent=5
    )
    manager = install(app)
    with pytest.raises(ValueError, match="token service down"):
        manager.trigger("e")  # nothing sent
    client = redis.Redis.from_url(redis_url)
    held = {
        "running marker": client.get(KEYS.running("e")),
        "cap places": client.zrange(KEYS.cap, 0, -1),
    }
    assert held == {"running marker": None, "cap places": []}, (
        f"a trigger that sent nothing left {held} behind for the singleton lease "
        f"({client.pttl(KEYS.running('e'))} ms): the entry is busy though nothing runs"
    )


# -- 2. Manager.backfill of an entry whose BeatLazyFunc raises ---------------------------------


def test_backfill_whose_beat_lazy_func_raises_records_the_slot_failed_not_in_flight_forever(
    redis_url: str, broker_url: str  # noqa: F811
) -> None:
    """Scenario: a static entry every 30 s with ``"args": [BeatLazyFunc(fetch_token)]`` whose
    function raises; its high-water mark is past 10:00:30 (the slot was missed);
    ``manager.backfill("e", 10:00:30, 10:00:30, force=True)``, then the same call again once
    the function works.

    Promise broken: docs/manager.md, Backfill: a backfill returns one ``BackfillSlot`` per slot,
    "A publish that raises is recorded ``failed`` (history item ``failed`` ...)";
    "Crashes: at most once": only "A backfill killed between the two leaves the slot
    ``publishing`` for ever". Here nothing was killed and nothing can have been sent.

    What happens: ``backfill`` raises the ``ValueError`` out of the call (no result list), and
    the slot stays ``publishing|<backfill id>`` in ``P{e}:backfill`` for ever: every later
    backfill reports it ``skipped:in_flight`` (force or not) although no message for it ever
    existed; the operator is told to look for a task id in the broker and ``HDEL`` by hand.
    (For a singleton entry the claim's running marker also stays for a lease.)

    Cause: ``backfill.py:_Run.publish`` calls ``build_occurrence`` (which evaluates the
    ``BeatLazyFunc`` items) outside the ``try`` that records ``failed``; ``run_backfill`` has
    no handler either, so the claim written by ``BACKFILL_CLAIM`` is never followed by
    ``BACKFILL_RECORD``.
    """
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("token service down")
        return "t0k3n"

    app = make_app(
        redis_url,
        {"e": {"task": "proj.sync", "schedule": 30.0, "args": [BeatLazyFunc(token)]}},
        broker_url=broker_url,
    )
    manager = install(app)
    client = redis.Redis.from_url(redis_url)
    mark = int(datetime(2026, 3, 2, 10, 1, tzinfo=UTC).timestamp() * 1_000_000)
    client.hset(KEYS.state("e"), mapping={"hwm": mark, "state": "sent"})
    slot = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)
    try:
        first: Any = [r.outcome for r in manager.backfill("e", slot, slot, force=True)]
    except ValueError as exc:
        first = f"raised {exc!r}"
    second = [r.outcome for r in manager.backfill("e", slot, slot, force=True)]
    assert first == ["failed"] and second in (["skipped:failed"], ["sent"]), (
        f"first backfill: {first}; the same backfill once the function works: {second} "
        f"(P{{e}}:backfill = {client.hgetall(KEYS.backfill('e'))}): a slot never sent is "
        "left in flight for ever"
    )


# -- 3. buffer_one / buffer_all call the BeatLazyFunc items before the claim ------------------


@pytest.mark.parametrize("overlap", ["buffer_one", "buffer_all"])
def test_a_buffering_entrys_beat_lazy_func_is_called_once_per_publish(
    redis_url: str, overlap: str
) -> None:
    """Scenario: a static entry every 30 s, ``overlap="buffer_one"`` (or ``"buffer_all"``),
    ``"args": [BeatLazyFunc(next_batch_id)]`` where the function has a side effect (it
    allocates a batch id, opens a report row ...). One beat replica, nothing running: the slot
    of 10:00:30 is published at once.

    Promise broken: docs/schedules.md, entry keys ``args``/``kwargs``: "items that are Celery's
    ``BeatLazyFunc`` ... are called at each publish and their results sent, as Celery's beat
    does ... Such an entry is built once its slot is won"; docs/migration.md "What stays"
    (``BeatLazyFunc`` items). Celery's beat calls each item once per send.

    What happens: the function is called twice for the one publish (the message carries the
    second value, the first is thrown away); with N replicas each asking about the slot it is
    called N + 1 times per publish, by replicas that lose the claim too.

    Cause: ``scheduler.py:Scheduler._due_slot`` builds the held message
    (``occurrence_to_json(build_occurrence(...))``, which evaluates the lazy items) for every
    ``BUFFERING`` slot *before* it is claimed; the publish path then builds the occurrence
    again after the claim is won.
    """
    calls: list[int] = []

    def next_batch_id() -> int:
        calls.append(1)
        return len(calls)

    definition = {
        "task": "proj.sync",
        "schedule": 30.0,
        "overlap": overlap,
        "args": [BeatLazyFunc(next_batch_id)],
    }
    clock = FakeClock("2026-03-02T10:00:00.300+00:00")
    publisher = RecordingPublisher()
    scheduler = make_scheduler(
        redis_url, clock, publisher=publisher, app=make_app(redis_url, {"e": definition})
    )
    try:
        while clock.now < datetime(2026, 3, 2, 10, 0, 31, tzinfo=UTC):
            clock.advance(0.25)
            scheduler.tick()
    finally:
        scheduler.close()
    sent = [(o.slot.isoformat(), list(o.args)) for o in publisher.occurrences]
    assert len(sent) == 1  # the slot of 10:00:30, published at once
    assert len(calls) == len(sent), (
        f"BeatLazyFunc called {len(calls)} times for {len(sent)} publish(es) {sent}"
    )


# -- 4. a runtime entry named like a digest tag shares a static entry's keys ------------------


def test_a_runtime_entry_named_by_a_digest_tag_does_not_share_the_static_entrys_keys(
    redis_url: str,
) -> None:
    """Scenario: a static entry Celery named ``repr(signature)`` (``add_periodic_task(30.0,
    sync.s({"tenant": "acme"}))`` without ``name=``): ``"proj.sync({'tenant': 'acme'})"``,
    keys tagged ``{#019a...}`` (docs/redis-layout.md shows such keys, ``P{#3f2a...}:state``).
    Then ``manager.add("#" + <those 32 hex digits>, "proj.other", 60.0)`` -- a legal runtime
    name (no braces, 33 characters), say an operator naming an entry after the key tag read
    in ``redis-cli``, or an id-like name. ``manager.pause(<runtime name>)``.

    Promise broken: docs/redis-layout.md: every key of an entry carries its name as a hash tag,
    and a static entry's name that cannot be a tag is replaced by ``#`` and a digest of it;
    "runtime entries cannot have such names" -- the two namespaces are meant to be apart.
    docs/manager.md: ``pause(name)`` pauses that entry.

    What happens: the add is accepted, and both entries use the same ``state``, ``pending``,
    ``running``, ``buffered``, ``history`` keys: pausing the runtime entry pauses the static one
    (``Manager.get`` says ``paused=True`` and it stops firing), their high-water marks,
    counters and histories mix.

    Cause: ``keys.py:entry_tag`` maps a brace/long name to ``"#" + blake2b`` without reserving
    that form: a plain name ``#<32 hex>`` is its own tag and collides; ``entry.py:_check_name``
    and ``manager.py:_check_name`` accept it (``RESERVED_NAMES`` covers only global keys).
    """
    static = "proj.sync({'tenant': 'acme'})"
    app = make_app(redis_url, {static: {"task": "proj.sync", "schedule": 30.0}})
    manager = install(app)
    runtime = entry_tag(static)  # "#" + 32 hex digits: was a plain, valid runtime name
    # Fixed: that form is no entry's name (the digest tags another entry's keys): refused,
    # nothing stored, the static entry untouched.
    with pytest.raises(ConfigError) as refused:
        manager.add(runtime, "proj.other", 60.0)
    assert (refused.value.entry, refused.value.field) == (runtime, "name")
    assert manager.store().get(runtime) is None
    assert not manager.get(static).paused
