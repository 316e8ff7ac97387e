"""Claim and send in one step (issue 19): when the broker is a Kombu Redis transport on the
claims' Redis, a new claim of an ``allow`` or ``skip`` entry is won, published and recorded by
the claim script itself: no instant leaves a slot claimed but not sent, and the slot costs one
script call instead of two."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from lane_helpers import Seen, history, one_step_beat
from replica_helpers import make_app, run_for

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.backends import Claim, ClaimOutcome
from celery_fork_scheduler.backends.base import to_epoch_us
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.due import DueSlot
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
SLOT = datetime(2026, 3, 2, 10, 0, 10, tzinfo=timezone.utc)


def queued(client: redis.Redis, queue: str = "celery") -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]


def push(message: str, queue: str = "celery") -> list[tuple[str, tuple[Any, ...]]]:
    return [("lpush", (queue, message)), ("pexpire", (queue, 60_000))]


def backend_of(redis_url: str, replica_id: str) -> RedisBackend:
    backend = RedisBackend.from_url(redis_url, read_settings(make_app(redis_url).conf))
    backend.replica_id = replica_id
    return backend


def claim_of(slot: datetime = SLOT, **options: Any) -> Claim:
    return Claim("job", slot, task_id_for("job", slot), **options)


def test_a_new_claim_won_is_sent_and_recorded_in_the_same_step(
    redis_url: str, redis_client: redis.Redis
) -> None:
    backend = backend_of(redis_url, "replica-a")
    [result] = backend.claim_and_send([claim_of()], [push("m1")])
    assert result.outcome is ClaimOutcome.SENT
    assert redis_client.lrange("celery", 0, -1) == [b"m1"]
    assert 0 < redis_client.pttl("celery") <= 60_000
    state = redis_client.hgetall(KEYS.state("job"))
    assert state[b"state"] == b"sent" and state[b"owner"] == b"replica-a"
    assert state[b"hwm"] == str(to_epoch_us(SLOT)).encode() and b"sent_at" in state
    assert redis_client.hlen(KEYS.pending("job")) == 0  # never claimed-but-unsent
    assert history(redis_client, "job") == ["sent"]


def test_a_claim_without_commands_stays_a_claim(redis_url: str, redis_client: redis.Redis) -> None:
    backend = backend_of(redis_url, "replica-a")
    [result] = backend.claim_and_send([claim_of()], [None])
    assert result.outcome is ClaimOutcome.WON
    assert redis_client.llen("celery") == 0
    state = redis_client.hgetall(KEYS.state("job"))
    assert state[b"state"] == b"claimed" and b"sent_at" not in state
    assert redis_client.hlen(KEYS.pending("job")) == 1


def test_the_same_request_after_a_lost_reply_answers_sent_and_sends_nothing_twice(
    redis_url: str, redis_client: redis.Redis
) -> None:
    backend = backend_of(redis_url, "replica-a")
    first = backend.claim_and_send([claim_of()], [push("m1")])
    again = backend.claim_and_send([claim_of()], [push("m1")])
    assert [r.outcome for r in first + again] == [ClaimOutcome.SENT, ClaimOutcome.SENT]
    assert redis_client.lrange("celery", 0, -1) == [b"m1"]
    takeover = backend.claim_and_send([claim_of(takeover=True)], [push("m1")])
    assert takeover[0].outcome is ClaimOutcome.SENT  # a retry asked after an outage
    assert history(redis_client, "job") == ["sent"]


def test_two_replicas_racing_publish_each_slot_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    a, b = backend_of(redis_url, "replica-a"), backend_of(redis_url, "replica-b")
    claims = [Claim(f"job{i}", SLOT, task_id_for(f"job{i}", SLOT)) for i in range(50)]
    first = a.claim_and_send(claims[:30], [push("a")] * 30)
    second = b.claim_and_send(claims, [push("b")] * 50)
    assert all(r.outcome is ClaimOutcome.SENT for r in first)
    outcomes = [r.outcome for r in second]
    assert outcomes == [ClaimOutcome.CLAIMED] * 30 + [ClaimOutcome.SENT] * 20
    assert redis_client.lrange("celery", 0, -1) == [b"b"] * 20 + [b"a"] * 30


def test_another_replicas_pending_claim_is_not_sent_by_the_one_step(
    redis_url: str, redis_client: redis.Redis
) -> None:
    a, b = backend_of(redis_url, "replica-a"), backend_of(redis_url, "replica-b")
    assert a.claim([claim_of()])[0].outcome is ClaimOutcome.WON  # claimed, not yet sent
    [result] = b.claim_and_send([claim_of()], [push("b")])
    assert result.outcome is ClaimOutcome.PENDING
    assert redis_client.llen("celery") == 0


def test_overlap_policies_that_hold_runs_back_ignore_the_commands(
    redis_url: str, redis_client: redis.Redis
) -> None:
    backend = backend_of(redis_url, "replica-a")
    [result] = backend.claim_and_send([claim_of(overlap="cancel_other")], [push("never")])
    assert result.outcome is ClaimOutcome.WON  # published after the claim, by the caller
    assert redis_client.llen("celery") == 0


def test_a_broker_command_that_fails_leaves_the_slot_sent_never_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    backend = backend_of(redis_url, "replica-a")
    redis_client.set("not-a-list", "x")
    [result] = backend.claim_and_send([claim_of()], [push("m", queue="not-a-list")])
    assert result.outcome is ClaimOutcome.UNCERTAIN
    assert "WRONGTYPE" in result.error
    other = backend_of(redis_url, "replica-b")
    assert other.claim_and_send([claim_of()], [push("m")])[0].outcome is ClaimOutcome.CLAIMED
    assert redis_client.llen("celery") == 0
    assert redis_client.hget(KEYS.state("job"), "state") == b"sent"
    assert history(redis_client, "job") == ["uncertain"]


def ready_beat(redis_url: str, clock: FakeClock, schedule: dict[str, Any]) -> Scheduler:
    """:func:`lane_helpers.one_step_beat`, its schedule set up."""
    scheduler = one_step_beat(redis_url, clock, schedule)
    scheduler.setup_schedule()
    return scheduler


def spy_publish_once(scheduler: Scheduler) -> list[Any]:
    """The calls of the publish script that follows a claim (the claim-then-publish path)."""
    calls: list[Any] = []
    backend: Any = scheduler.backend
    real = backend.publish_once

    def spy(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    backend.publish_once = spy
    return calls


def test_beat_claims_and_sends_in_one_script_and_reports_the_dispatch(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, seen: Seen
) -> None:
    scheduler = ready_beat(
        redis_url, clock, {"job": {"task": "job", "schedule": every(10).seconds, "args": (1,)}}
    )
    separate = spy_publish_once(scheduler)
    try:
        run_for(scheduler, clock, 25)
    finally:
        scheduler.close()
    messages = queued(redis_client)
    slots = [datetime.fromisoformat(m["headers"]["fork_scheduler_slot"]) for m in messages]
    assert [m["headers"]["id"] for m in messages] == [task_id_for("job", s) for s in slots]
    assert len(slots) == 2 and seen.dispatched == [("job", slot.isoformat()) for slot in slots]
    assert separate == []  # no publish script after the claim: the claim sent them
    assert history(redis_client, "job") == ["sent", "sent"]


@pytest.mark.parametrize(
    "options",
    [{"overlap": "buffer_one"}, {"args": lambda: (1,)}],
    ids=["buffer_one", "lazy-args"],
)
def test_entries_decided_after_the_claim_keep_the_publish_after_it(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, options: dict[str, Any]
) -> None:
    schedule = {"job": {"task": "job", "schedule": every(10).seconds, **options}}
    scheduler = ready_beat(redis_url, clock, schedule)
    separate = spy_publish_once(scheduler)
    try:
        run_for(scheduler, clock, 15)
    finally:
        scheduler.close()
    assert len(queued(redis_client)) == 1
    assert len(separate) == 1


def test_slots_asked_about_for_another_replica_or_to_take_over_are_claimed_without_a_message(
    redis_url: str, clock: FakeClock
) -> None:
    """A slot of an entry another replica owns (asked after its grace) or a takeover retry
    mostly finds the slot taken: its claim carries no message (built only if won)."""
    scheduler = ready_beat(
        redis_url, clock, {"job": {"task": "job", "schedule": every(10).seconds}}
    )
    try:
        entry = scheduler.entries["job"]
        own = DueSlot(entry, claim_of())
        foreign = DueSlot(entry, claim_of(), foreign=True)
        takeover = DueSlot(entry, claim_of(takeover=True))
        sends = scheduler.pipeline.sends_for([own, foreign, takeover])
    finally:
        scheduler.close()
    assert sends is not None
    assert sends[0] is not None and sends[0][0][0] == "lpush"
    assert sends[1:] == [None, None]


def test_with_wait_replicas_a_shared_redis_keeps_the_fence_path(
    redis_url: str, clock: FakeClock
) -> None:
    """``fork_scheduler_wait_replicas``: every write is confirmed by the Redis replicas before
    the slot is published, so neither a claim nor ``PUBLISH_ONCE`` may publish in its own
    script (found by the simulator with ``--shared-broker``: a message consumed from the old
    master, its claim lost in the failover, won and sent again)."""
    schedule = {"job": {"task": "job", "schedule": every(10).seconds}}
    scheduler = ready_beat(redis_url, clock, schedule)
    try:
        scheduler.pipeline.settings = replace(scheduler.pipeline.settings, wait_replicas=1)
        entry = scheduler.entries["job"]
        assert scheduler.pipeline.sends_for([DueSlot(entry, claim_of())]) is None
        assert not scheduler.pipeline._shares_redis_with_broker()
    finally:
        scheduler.close()
