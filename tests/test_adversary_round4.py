"""Adversary round 4: reproductions that fail on the current code.

Two ordinary events meeting: the cluster cap and a publish that fails; ownership and a
runtime change; backfill and the scheduler; pause on failure and retries. Each test quotes the
promise it checks. Real redis-server (``redis_url``), fake clocks, in-process replicas.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from replica_helpers import BrokenPublisher, fired, make_scheduler, run_for

from celery_fork_scheduler import Manager
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

KEYS = Keys("scheduler:")


def run_with_instant_worker(
    scheduler: Any,
    clock: FakeClock,
    publisher: RecordingPublisher,
    client: redis.Redis,
    seconds: float,
) -> None:
    """Tick every 0.25 s of the fake clock; after each tick every published run "ends" at once,
    freeing its place under the cap as the worker does (``ZREM`` of its task id)."""
    for _ in range(int(seconds / 0.25)):
        clock.advance(0.25)
        scheduler.tick()
        ids = [o.task_id for o in publisher.occurrences]
        if ids:
            client.zrem(KEYS.cap, *ids)


def _cap_schedule() -> dict[str, Any]:
    return {
        "broken": {"task": "tasks.broken", "schedule": timedelta(seconds=10)},
        "fine": {"task": "tasks.fine", "schedule": timedelta(seconds=1)},
    }


# -- the cluster cap and a slot that is given back after it took its place -------------------


def _raise() -> list[Any]:
    raise RuntimeError("the lazy args' database is down")


@pytest.mark.parametrize("failure", ["publish_refused", "lazy_args_raise"])
def test_a_slot_that_is_never_published_gives_its_place_under_the_cap_back(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, failure: str
) -> None:
    """With ``fork_scheduler_max_concurrent = 1``, one entry's slot at :10 takes the place and is
    never published; nothing runs, so the other entry's later slots must find the place free.

    ``publish_refused`` — guarantees.md, "A publish is refused before anything was sent": "any
    other error (encoding, routing) is permanent and not retried. When it gives up, the failure
    is recorded and the claim closed." Was: RECORD_FAILURE never freed the place.
    ``lazy_args_raise`` — guarantees.md: "Lazy `args`/`kwargs` raise ... The claim is given back
    before the fence ... every other entry keeps firing." Was: MARK_SKIPPED freed the singleton
    marker, not the place. singleton.md, the cluster-wide cap: "A run takes a place when its
    slot is published ... frees it when the run ends". Either way every other entry was
    reported ``capped`` for a whole ``fork_scheduler_singleton_lease`` (60 s)."""
    schedule = _cap_schedule()
    publisher: RecordingPublisher
    if failure == "publish_refused":
        publisher = BrokenPublisher(
            error=lambda: TypeError("Object of type set is not JSON serializable")
        )
    else:
        schedule["broken"]["args"] = _raise
        publisher = RecordingPublisher()
    scheduler = make_scheduler(
        redis_url, clock, schedule, publisher=publisher, fork_scheduler_max_concurrent=1
    )
    try:
        scheduler.tick()
        run_with_instant_worker(scheduler, clock, publisher, redis_client, 14)
    finally:
        scheduler.close()
    held = [m.decode() for m in redis_client.zrange(KEYS.cap, 0, -1)]
    assert not {o.task_id for o in publisher.occurrences if o.entry == "broken"}
    published_fine = sorted(slot for (name, slot) in fired(publisher) if name == "fine")
    assert any(slot.endswith(":12+00:00") for slot in published_fine), (
        f"after broken's slot at :10 was never published, fine was capped; the cap holds "
        f"{held} (nothing executes); fine published {published_fine}"
    )


class _NoBroker(RecordingPublisher):
    """A broker that cannot be reached (``prepare`` raises) while ``down`` is set."""

    down = False

    def prepare(self) -> None:
        if self.down:
            raise ConnectionRefusedError("broker down")
        super().prepare()


def test_a_slot_given_back_for_want_of_the_broker_gives_its_place_under_the_cap_back(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """guarantees.md, failure table, "The broker cannot be reached when a batch is about to be
    published": "the replica asks again one second later while the slots are within
    `fork_scheduler_catchup_grace`; after that it gives them back", reported
    ``broker_unavailable``. singleton.md, cap: "A run takes a place when its slot is published".

    The broker is down 25 s, then back: the slot given back (never published) keeps its place
    under the cap for a singleton lease (60 s), so once the broker is back every slot is
    ``capped`` although nothing runs. Cause: pipeline._prepare -> mark_skipped
    ("broker_unavailable") does not free the place."""
    publisher = _NoBroker()
    scheduler = make_scheduler(
        redis_url,
        clock,
        {"fine": {"task": "tasks.fine", "schedule": timedelta(seconds=1)}},
        publisher=publisher,
        fork_scheduler_max_concurrent=1,
    )
    try:
        scheduler.tick()
        run_with_instant_worker(scheduler, clock, publisher, redis_client, 2)
        publisher.down = True
        run_with_instant_worker(scheduler, clock, publisher, redis_client, 25)
        publisher.down = False
        before = len(publisher.occurrences)
        run_with_instant_worker(scheduler, clock, publisher, redis_client, 4)
    finally:
        scheduler.close()
    held = [m.decode() for m in redis_client.zrange(KEYS.cap, 0, -1)]
    after = sorted(o.slot.isoformat() for o in publisher.occurrences[before:])
    assert len(after) >= 3, (
        f"broker back for 4 s, only {after} published; the cap holds {held} (nothing runs)"
    )


def test_a_slot_waiting_for_the_broker_is_given_back_after_the_catchup_grace(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """guarantees.md, failure table, "The broker cannot be reached when a batch is about to be
    published": "the claims stay this replica's, unfenced, and it asks again one second later
    while the slots are within `fork_scheduler_catchup_grace`; after that it gives them back"
    (``broker_unavailable``).

    The broker is down 12 s (grace 5 s). Instead: the slot is published 9+ s late, once the
    broker is back. Cause: pipeline.ask_again queues the replica's own won claim with
    ``takeover=True``, and pipeline._worth_retrying gives a takeover the window of a dead
    replica's claim (grace + claim lease + grace = 20 s)."""
    publisher = _NoBroker()
    scheduler = make_scheduler(
        redis_url,
        clock,
        {"fine": {"task": "tasks.fine", "schedule": timedelta(seconds=1)}},
        publisher=publisher,
    )
    try:
        scheduler.tick()
        publisher.down = True
        run_for(scheduler, clock, 12)
        publisher.down = False
        run_for(scheduler, clock, 2)
        now = clock()
    finally:
        scheduler.close()
    late = [
        (o.slot.isoformat(), round((now - o.slot).total_seconds(), 1))
        for o in publisher.occurrences
        if now - o.slot > timedelta(seconds=2 + 5 + 1)
    ]
    assert not late, f"published after waiting for the broker longer than the grace: {late}"


class _RefusesOnce(RecordingPublisher):
    """The first message of each entry is refused for good (it cannot be encoded)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: set[str] = set()

    def publish(self, occurrence: Any) -> None:
        if occurrence.entry not in self.refused:
            self.refused.add(occurrence.entry)
            raise TypeError("Object of type set is not JSON serializable")
        super().publish(occurrence)


def test_a_singleton_slot_refused_for_good_does_not_leave_the_entry_busy(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """singleton.md, Seeing it happen: "`busy` | singleton: the previous run still executes";
    the running marker "holds the task id of the run in progress". guarantees.md, "A publish
    is refused before anything was sent": "any other error (encoding, routing) is permanent
    and not retried. When it gives up, the failure is recorded and the claim closed." (The
    same doc frees the marker at once after a failed publish of a held run and of a trigger:
    "they do not block the entry for a lease".)

    Instead: the marker the claim set for the refused slot stays for a whole
    ``fork_scheduler_singleton_lease``; every later slot is skipped ``busy`` although no run
    exists. Cause: lua RECORD_FAILURE (pipeline._not_sent -> record_failure) does not delete the
    running marker of the failed task id (MARK_SKIPPED does)."""
    publisher = _RefusesOnce()
    scheduler = make_scheduler(
        redis_url,
        clock,
        {"solo": {"task": "tasks.solo", "schedule": timedelta(seconds=1), "singleton": True}},
        publisher=publisher,
    )
    try:
        scheduler.tick()
        run_for(scheduler, clock, 5)
    finally:
        scheduler.close()
    outcomes = [
        json.loads(raw)["outcome"] for raw in redis_client.lrange(KEYS.history("solo"), 0, -1)
    ]
    marker = redis_client.get(KEYS.running("solo"))
    in_order = outcomes[::-1]
    # The slot after the failed one finds no run; later ones find that slot's run (no worker
    # here ends it), so they are rightly busy.
    assert in_order[in_order.index("failed") + 1] == "sent", (
        f"no run exists (the only claim failed to publish), yet the next slot was not sent: "
        f"history {in_order}, marker {marker!r}"
    )


def test_backfill_sends_a_singleton_slot_whose_publish_was_refused(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """manager.md, Backfill: it "publishes each slot ... that was **never published**"; "a
    `failed` item is a publish that raised before the message could leave" (so such a slot is
    sent); `already_published` means "a backfill published it ..., the entry's state or history
    has a publish or a run of it ..., or its run holds the running marker".

    The scheduler's publish of a singleton slot was refused for good (history ``failed``).
    Backfilling that slot answers ``already_published`` (detail ``running``): the marker the
    failed claim left behind (lua RECORD_FAILURE keeps it) passes for a run of the slot."""
    publisher = _RefusesOnce()
    schedule = {"solo": {"task": "tasks.solo", "schedule": timedelta(seconds=1), "singleton": True}}
    scheduler = make_scheduler(redis_url, clock, schedule, publisher=publisher)
    try:
        scheduler.tick()
        run_for(scheduler, clock, 2)
        app = scheduler.app
    finally:
        scheduler.close()
    items = [json.loads(raw) for raw in redis_client.lrange(KEYS.history("solo"), 0, -1)]
    [failed] = [item for item in items if item["outcome"] == "failed"]
    results = Manager(app).backfill("solo", clock() - timedelta(seconds=3), clock(), rate=1000)
    by_slot = {int(r.slot.timestamp() * 1_000_000): r for r in results}
    result = by_slot[int(failed["slot"])]
    # The next slot's run holds the marker now (no worker ends it): the backfill may find the
    # entry busy, but it must not take the refused slot for a published one.
    assert result.outcome != "already_published", (
        f"the slot whose publish was refused was never published, yet backfill says "
        f"{result.outcome} ({result.detail})"
    )


def test_a_jittered_slot_refused_by_the_broker_is_retried_within_the_grace_of_its_publish(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """guarantees.md, failure table, "The broker cannot be reached ...": it "asks again one
    second later while the slots are within `fork_scheduler_catchup_grace`". A jittered slot
    is published at slot + offset: the grace counts from that instant, not from the nominal
    slot (else a slot whose offset passes the grace is given back at the first refusal)."""
    from celery_fork_scheduler.jitter import jitter_offset

    jitter = timedelta(seconds=40)
    slot = datetime.fromisoformat("2026-03-02T10:01:00+00:00")
    names = (f"late{i}" for i in range(200))
    # an entry whose offset at that slot is well past the 5 s grace
    name = next(n for n in names if jitter_offset(n, slot, jitter).total_seconds() > 15)
    offset = jitter_offset(name, slot, jitter)
    publisher = _NoBroker()
    scheduler = make_scheduler(
        redis_url,
        clock,
        {name: {"task": "tasks.fine", "schedule": timedelta(minutes=1), "jitter": 40}},
        publisher=publisher,
    )
    try:
        scheduler.tick()
        run_for(scheduler, clock, (slot + offset - clock()).total_seconds() - 1)
        publisher.down = True
        run_for(scheduler, clock, 3)  # refused at its publish instant, asked again each second
        publisher.down = False
        run_for(scheduler, clock, 2)
    finally:
        scheduler.close()
    assert [o.slot for o in publisher.occurrences if o.entry == name].count(slot) == 1
