"""Adversarial tests for the lane (round 9): the next chunk's claim runs in a thread of its own
while this chunk publishes.

Every test here FAILS on the code it was written against, for the reason its docstring gives,
unless listed below as kept-while-passing.

Kept although they pass: none (every test below fails on the current code). The first three
were written against the fence path, which now starts the next chunk's claim only once its
first batch is published; they use the one-step path, where that claim starts as soon as the
first batch's script has (the last one failed before the lane too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from lane_helpers import burst_schedule, fail_calls, fired, one_step_beat
from replica_helpers import make_app, make_scheduler, run_for

from celery_fork_scheduler import every, signals
from celery_fork_scheduler.backends import Claim
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence, occurrence_to_json
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
#: 200 entries due at once: one chunk cut head-first into two claims of 100 (e000-e099, then
#: e100-e199), each one publish batch: the second claim runs in the lane while the first
#: chunk's batch is fenced and published.
ENTRIES = 200
SLOT = "2026-03-02T10:00:10+00:00"


@pytest.fixture
def skipped() -> Any:
    seen: list[tuple[str, str, str]] = []

    def receiver(
        sender: Any = None, entry: str = "", slot: Any = None, reason: str = "", **_: Any
    ) -> None:
        seen.append((entry, slot.isoformat(), reason))

    signals.entry_skipped.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        signals.entry_skipped.disconnect(receiver)


def test_a_paused_skip_decided_by_the_lanes_claim_is_reported_paused(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, skipped: list[Any]
) -> None:
    """Promise 1 (every skip is reported with its reason) and the failure table ("An entry is
    paused: the claim script records every due slot as skipped (paused)").

    Chunk two's claim runs in the lane while chunk one's batch is fenced; the fence fails
    (Redis blinked). The claim already ran: it recorded e150's slot ``skipped:paused`` in
    Redis. ``Scheduler._handle`` throws those results away (``claim.settle()``; the works are
    re-queued as if never claimed), so the ``paused`` report never comes; asked again, the
    slot is below the mark and answers ``claimed``. Expected: one ``entry_skipped`` for e150
    with reason ``paused`` (as without the blink). Actual: ``redis_unavailable`` then
    ``claimed``; the history says ``skipped:paused``.
    """
    scheduler = one_step_beat(redis_url, clock, burst_schedule(ENTRIES))
    redis_client.hset(KEYS.state("e150"), mapping={"paused": "1", "pause_note": ""})
    fail_calls(scheduler, "publish_once", lambda call: call == 1)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 13)
        reasons = [reason for entry, slot, reason in skipped if entry == "e150" and slot == SLOT]
        sent = fired(redis_client)
        assert ("e150", SLOT) not in sent
        assert set(sent.values()) == {1}
        assert len([k for k in sent if k[1] == SLOT]) == ENTRIES - 1  # the others all fire
        assert "paused" in reasons, reasons
    finally:
        scheduler.close()


def test_a_buffer_all_run_released_by_the_lanes_claim_is_published(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failure table, singleton row: a ``buffer_all`` run queued while nobody runs the entry
    (its runner died) is handed the marker by the next claim, which answers ``released``
    with it: "the head of the queue ... must be published by the caller"
    (``Scheduler._publish_released``).

    When that claim is chunk two's, run in the lane while chunk one's fence fails, the
    answer is dropped by ``Scheduler._handle`` (``claim.settle()``): the queued run was popped
    from the queue and given the marker in Redis, and nobody ever publishes it — silently lost
    (no report), and the entry is blocked until the marker's lease runs out. Expected: the
    released run (slot 10:00:00) is published once. Actual: never.
    """
    monkeypatch.setattr("celery_fork_scheduler.held.HeldRuns.confirmed", lambda self: True)
    released: list[str] = []
    monkeypatch.setattr(
        "celery_fork_scheduler.held.HeldRuns.publish",
        lambda self, held: released.append(held if isinstance(held, str) else held.decode()),
    )
    scheduler = one_step_beat(
        redis_url, clock, burst_schedule(ENTRIES, e150={"overlap": "buffer_all"})
    )
    scheduler.setup_schedule()
    entry = scheduler.entries["e150"]
    earlier = datetime(2026, 3, 2, 10, 0, 0, tzinfo=timezone.utc)
    queued = occurrence_to_json(build_occurrence(entry, earlier, task_id_for("e150", earlier)))
    redis_client.rpush(KEYS.buffered("e150"), queued)  # queued; its runner died (no marker)
    redis_client.hset(KEYS.state("e150"), "hwm", str(int(earlier.timestamp() * 1_000_000)))
    fail_calls(scheduler, "publish_once", lambda call: call == 1)
    try:
        run_for(scheduler, clock, 13)
        assert any(task_id_for("e150", earlier) in held for held in released), released
    finally:
        scheduler.close()


def test_claims_won_in_the_lane_before_a_long_outage_are_published_late_not_left_pending(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Failure table, "Redis becomes unreachable between winning a claim and the fence": "the
    replica asks about them again (takeover-only) once Redis is back, and publishes those
    still its own. The tasks arrive late, once."

    Chunk two's claim is won in the lane; then chunk one's fence finds Redis gone, and Redis
    stays away 20 s (longer than the catch-up grace). Chunk one's won slots are asked about
    again (``PublishPipeline.ask_again``: takeover-only retries) and published late, once.
    Chunk two's won slots are not: ``Scheduler._handle`` puts their works back as plain
    queue items (``_on_backend_down``), so once Redis is back the catch-up rule ("latest")
    drops the slot of 10:00:10 — which this replica WON — in favour of 10:00:30. Its claim
    stays pending in Redis, never published, never taken over (no other replica saw it).
    Before the lane, chunk two was never claimed before the outage, so its slot was simply
    missed; now it is a won claim left behind.
    Expected: every entry's 10:00:10 slot published once, no pending claim left.
    Actual: 150 entries' 10:00:10 slot never published, their claims left pending.
    """
    scheduler = one_step_beat(redis_url, clock, burst_schedule(ENTRIES))
    backend: Any = scheduler.backend
    real_claim, real_publish = backend.claim, backend.publish_once
    down_from = datetime(2026, 3, 2, 10, 0, 10, 100_000, tzinfo=timezone.utc)
    back_at = datetime(2026, 3, 2, 10, 0, 30, 600_000, tzinfo=timezone.utc)
    publishes = [0]

    def claim(claims: Sequence[Claim]) -> Any:
        if down_from <= clock() < back_at:
            raise BackendUnavailableError("simulated: Redis away")
        return real_claim(claims)

    def publish_once(claims: Sequence[Claim], commands: Any) -> Any:
        publishes[0] += 1
        if publishes[0] == 1 or down_from <= clock() < back_at:
            raise BackendUnavailableError("simulated: Redis away")
        return real_publish(claims, commands)

    backend.claim = claim
    backend.publish_once = publish_once
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 33)
        sent = fired(redis_client)
        assert set(sent.values()) == {1}
        first = {entry for entry, slot in sent if slot == SLOT}
        missing = sorted({f"e{i:03}" for i in range(ENTRIES)} - first)
        left_pending = [
            f"e{i:03}" for i in range(ENTRIES) if redis_client.hlen(KEYS.pending(f"e{i:03}"))
        ]
        assert not missing and not left_pending, (len(missing), missing[:3], len(left_pending))
    finally:
        scheduler.close()


def test_a_fence_path_slot_beside_a_one_step_publish_that_lost_redis_is_asked_again(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Failure table, "Redis becomes unreachable between winning a claim and the fence": the
    won slots not fenced are asked about again and published late, once.

    On the one-step path a batch can mix slots published by ``PUBLISH_ONCE`` (in the lane)
    and slots with no template (here a ``datetime`` ``expires``) that take the fence path
    (``StartedBatch.rest``). When the lane's one-step script finds Redis gone,
    ``PublishPipeline._settle_once`` asks about its own slots again and raises;
    ``_finish_batch`` then returns the error without asking about ``rest``: those won claims
    are neither fenced, nor published, nor queued again — left pending for good on a lone
    replica. (The same hole existed in ``_send_batch`` before the lane; ``_finish_batch``
    kept it.) Expected: ``plain``'s 10:00:10 slot published once after Redis is back.
    Actual: never published, its claim left pending.
    """
    schedule = {
        "a": {"task": "t", "schedule": every(10).seconds},
        "b": {"task": "t", "schedule": every(10).seconds},
        "plain": {
            "task": "t",
            "schedule": every(10).seconds,
            "options": {"expires": datetime(2030, 1, 1, tzinfo=timezone.utc)},
        },
    }
    app = make_app(redis_url, schedule)
    app.conf.broker_url = redis_url
    scheduler = make_scheduler(redis_url, clock, {}, app=app)
    scheduler.publisher = CeleryPublisher(app, lambda: scheduler.producer)
    backend: Any = scheduler.backend
    real = backend.publish_once
    calls = [0]
    rests: list[int] = []

    def publish_once(claims: Sequence[Claim], commands: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise BackendUnavailableError("simulated: Redis went away")
        return real(claims, commands)

    backend.publish_once = publish_once
    real_fence = backend.begin_publish

    def begin_publish(claims: Sequence[Claim]) -> Any:
        rests.append(len(claims))
        return real_fence(claims)

    backend.begin_publish = begin_publish
    # The claim-then-publish path (a claim can send its slot itself: tests/test_claim_and_send.py)
    scheduler.pipeline.sends_for = lambda due: None  # type: ignore[method-assign]
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 13)
        import json

        messages = [json.loads(raw) for raw in redis_client.lrange("celery", 0, -1)]
        fired = Counter(
            (m["headers"]["fork_scheduler_entry"], m["headers"]["fork_scheduler_slot"])
            for m in messages
        )
        assert calls[0] >= 1  # the one-step path was taken
        assert set(fired.values()) == {1}
        assert ("a", SLOT) in fired and ("b", SLOT) in fired
        assert ("plain", SLOT) in fired, (fired, rests, redis_client.hgetall(KEYS.pending("plain")))
    finally:
        scheduler.close()
