"""One-step publish (issue 19): when the broker is a Kombu Redis transport on the claims'
Redis, each slot is fenced, published and recorded by one script, so no instant leaves a slot
published but unrecorded, or fenced but unpublished."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from replica_helpers import make_app, make_scheduler, run_for

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.backends import Claim
from celery_fork_scheduler.backends.base import to_epoch_us
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import CeleryPublisher
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
SLOT = datetime(2026, 3, 2, 10, 0, 10, tzinfo=timezone.utc)


def queued(client: redis.Redis, queue: str = "celery") -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]


def beat_on(broker_url: str, claims_url: str, clock: FakeClock) -> tuple[Scheduler, list[Any]]:
    """A replica of an entry every 10 s publishing through Celery to ``broker_url``, claiming
    on ``claims_url``; and the batches it fences apart from their publish."""
    app = make_app(claims_url, {"job": {"task": "job", "schedule": every(10).seconds}})
    app.conf.broker_url = broker_url
    scheduler = make_scheduler(claims_url, clock, {}, app=app)
    scheduler.publisher = CeleryPublisher(app, lambda: scheduler.producer)
    fenced: list[Any] = []
    real_begin = scheduler.backend.begin_publish
    scheduler.backend.begin_publish = lambda claims: fenced.append(claims) or real_begin(claims)  # type: ignore[method-assign]
    scheduler.setup_schedule()
    return scheduler, fenced


def test_a_shared_redis_publishes_and_records_each_slot_in_one_step(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, begun = beat_on(redis_url, redis_url, clock)
    try:
        with caplog.at_level(logging.INFO, logger="celery_fork_scheduler"):
            run_for(scheduler, clock, 25)
        messages = queued(redis_client)
        slots = [m["headers"]["fork_scheduler_slot"] for m in messages]
        assert slots == ["2026-03-02T10:00:10+00:00", "2026-03-02T10:00:20+00:00"]
        assert [m["headers"]["id"] for m in messages] == [
            task_id_for("job", datetime.fromisoformat(slot)) for slot in slots
        ]
        assert begun == []  # no separate fence: the script fenced, sent and recorded
        assert redis_client.hlen(KEYS.pending("job")) == 0
        history = [json.loads(i) for i in redis_client.lrange(KEYS.history("job"), 0, -1)]
        assert [item["outcome"] for item in history] == ["sent", "sent"]
        assert "the broker shares the claims' Redis" in caplog.text
    finally:
        scheduler.close()


@pytest.fixture
def backend(redis_url: str) -> RedisBackend:
    app = make_app(redis_url)
    backend = RedisBackend.from_url(redis_url, read_settings(app.conf))
    backend.replica_id = "replica-a"
    return backend


def won(backend: RedisBackend, slot: datetime = SLOT) -> Claim:
    claim = Claim("job", slot, task_id_for("job", slot))
    [result] = backend.claim([claim])
    assert result.outcome.value == "won", result
    return claim


def push(message: str, queue: str = "celery") -> list[tuple[str, tuple[Any, ...]]]:
    return [("lpush", (queue, message)), ("pexpire", (queue, 60_000))]


def test_a_repeated_request_after_a_lost_reply_publishes_nothing_twice(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    claim = won(backend)
    assert backend.publish_once([claim], [push("m1")]) == [1]
    assert backend.publish_once([claim], [push("m1")]) == [2]  # the same request, again
    assert redis_client.lrange("celery", 0, -1) == [b"m1"]
    assert 0 < redis_client.pttl("celery") <= 60_000


def test_a_claim_taken_over_or_fenced_elsewhere_is_not_published(
    backend: RedisBackend, redis_client: redis.Redis, redis_url: str
) -> None:
    claim = won(backend)
    other = RedisBackend.from_url(redis_url, backend.settings)
    other.replica_id = "replica-b"
    assert other.publish_once([claim], [push("theirs")]) == [0]  # not replica-b's claim
    assert backend.begin_publish([claim]) == [True]  # an earlier fence path attempt
    assert backend.publish_once([claim], [push("again")]) == [0]  # fenced: never sent again
    assert redis_client.llen("celery") == 0


def test_a_broker_command_that_fails_leaves_the_slot_fenced_never_sent_again(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    claim = won(backend)
    redis_client.set("not-a-list", "x")
    [reply] = backend.publish_once([claim], [push("m", queue="not-a-list")])
    assert isinstance(reply, Exception)
    pending = redis_client.hget(KEYS.pending("job"), str(to_epoch_us(SLOT)))
    assert pending is not None and pending.endswith(b"|publishing")
    assert backend.claim([Claim("job", SLOT, claim.task_id, takeover=True)])[0].outcome.value in (
        "won",
        "in_flight",
    )
    assert backend.publish_once([claim], [push("m")]) == [0]
    assert redis_client.get("not-a-list") == b"x"


def test_claims_in_another_database_keep_the_fence_path(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    scheduler, fenced = beat_on(redis_url, redis_url.rsplit("/", 1)[0] + "/1", clock)
    try:
        run_for(scheduler, clock, 15)
        assert len(queued(redis_client)) == 1
        assert len(fenced) == 1
    finally:
        scheduler.close()


def test_a_burst_is_streamed_the_first_chunk_leaves_before_the_next_is_decided(
    redis_url: str, clock: FakeClock
) -> None:
    """Issue 19: a 2 000-entry burst is decided, claimed and published chunk by chunk; the
    entries' next slots are computed after their chunk is published."""
    schedule = {f"e{i:04}": {"task": "t", "schedule": every(10).seconds} for i in range(2000)}
    scheduler = make_scheduler(redis_url, clock, schedule)
    steps: list[str] = []
    real_decide, real_send = scheduler._decide, scheduler.pipeline.send

    def decide(items: Any, *args: Any) -> Any:
        steps.append(f"decide {len(items)}")
        return real_decide(items, *args)

    def send(admitted: Any, now: Any, meanwhile: Any = None) -> Any:
        steps.append(f"send {len(admitted)}")
        return real_send(admitted, now, meanwhile)

    scheduler._decide = decide  # type: ignore[method-assign]
    scheduler.pipeline.send = send  # type: ignore[method-assign]
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10)
        burst = [step.split()[0] for step in steps[steps.index("decide 500") :]]
        assert burst[:8] == ["decide", "send"] * 4, steps
        assert len(scheduler.publisher.occurrences) == 2000  # type: ignore[attr-defined]
        assert len(scheduler.queue) >= 2000  # every entry's next slot queued
    finally:
        scheduler.close()


def test_idle_time_makes_the_templates_of_entries_due_soon_and_sends_nothing(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Issue 19: the first slot of an entry that never fired goes out as fast as the later
    ones, its message template made while beat waited for it."""
    scheduler, _ = beat_on(redis_url, redis_url, clock)
    try:
        scheduler.tick()  # 10:00:00.3: the first slot is at 10:00:10
        publisher = scheduler.publisher
        assert isinstance(publisher, CeleryPublisher)
        assert "job" in publisher._cache and publisher._cache["job"][2] is not None
        assert redis_client.llen("celery") == 0
    finally:
        scheduler.close()


def test_a_repeated_request_recognises_every_slot_it_published_not_only_the_latest(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    """Two slots of one entry published by one request whose reply was lost: asked again,
    the earlier one (below the mark, no pending claim) answers "published before" too."""
    later = SLOT.replace(second=20)
    first, second = won(backend), won(backend, later)
    assert backend.publish_once([first, second], [push("m1"), push("m2")]) == [1, 1]
    assert backend.publish_once([first, second], [push("m1"), push("m2")]) == [2, 2]
    assert redis_client.lrange("celery", 0, -1) == [b"m2", b"m1"]
