"""Adversarial tests for the lane (round 10): the next chunk's claim runs in a thread of its own
while this chunk publishes.

Every test here FAILS on the code it was written against, for the reason its docstring gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from lane_helpers import burst_schedule, fired, one_step_beat
from replica_helpers import run_for

from celery_fork_scheduler import Scheduler, every, signals
from celery_fork_scheduler.backends import Claim
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
#: 200 entries due at once: two claims of 100 (the head chunk, then the rest), each one
#: publish batch: the second claim runs in the lane after the first chunk's publish script.
ENTRIES = 200
SLOT = "2026-03-02T10:00:10+00:00"


def left_pending(client: redis.Redis) -> list[str]:
    return [f"e{i:03}" for i in range(ENTRIES) if client.hlen(KEYS.pending(f"e{i:03}"))]


@pytest.fixture
def reports() -> Any:
    """Every (signal, entry, slot, reason) this process reports."""
    seen: list[tuple[str, str, str, str]] = []

    def skipped(sender: Any = None, entry: str = "", slot: Any = None, reason: str = "", **_: Any):
        seen.append(("skipped", entry, slot.isoformat(), reason))

    def dispatched(sender: Any = None, entry: Any = None, slot: Any = None, **_: Any) -> None:
        name = getattr(entry, "name", entry)
        seen.append(("dispatched", str(name), slot.isoformat(), ""))

    signals.entry_skipped.connect(skipped, weak=False)
    signals.entry_dispatched.connect(dispatched, weak=False)
    try:
        yield seen
    finally:
        signals.entry_skipped.disconnect(skipped)
        signals.entry_dispatched.disconnect(dispatched)


class RedisAway:
    """Redis goes away when chunk one's publish script runs (``publish_once`` fails), after
    chunk two's claim was asked for in the lane; it is back at ``back_at``. Claims made before
    ``down_from`` (by the fake clock) succeed: chunk two's claim runs in the lane at the tick
    of 10:00:10.05, just before the cut."""

    def __init__(self, scheduler: Scheduler, clock: FakeClock, back_at: datetime) -> None:
        self.clock = clock
        self.back_at = back_at
        self.down_from = datetime(2026, 3, 2, 10, 0, 10, 100_000, tzinfo=timezone.utc)
        self.gone = False
        backend: Any = scheduler.backend
        self.real_claim = backend.claim
        self.real_publish = backend.publish_once
        self.real_take = backend.take_cap_places
        backend.claim = self.claim
        backend.publish_once = self.publish_once
        backend.take_cap_places = self.take_cap_places

    def away(self) -> bool:
        if self.clock() >= self.back_at:
            self.gone = False
        return self.gone or self.down_from <= self.clock() < self.back_at

    def claim(self, claims: Sequence[Claim]) -> Any:
        if self.down_from <= self.clock() < self.back_at:
            raise BackendUnavailableError("simulated: Redis away")
        return self.real_claim(claims)

    def publish_once(self, claims: Sequence[Claim], commands: Any) -> Any:
        if not self.gone and self.clock() < self.down_from:
            self.gone = True  # chunk one's script: Redis goes now
        if self.away():
            raise BackendUnavailableError("simulated: Redis away")
        return self.real_publish(claims, commands)

    def take_cap_places(self, claims: Sequence[Claim], cap: int) -> Any:
        if self.away():
            raise BackendUnavailableError("simulated: Redis away")
        return self.real_take(claims, cap)


def test_claims_won_in_the_lane_under_a_cap_before_a_long_outage_are_published_not_left_pending(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Failure table, "Redis becomes unreachable between winning a claim and the fence: ... the
    replica asks about them again (takeover-only) once Redis is back, and publishes those
    still its own. The tasks arrive late, once." (round 9's third finding, with
    ``fork_scheduler_max_concurrent`` set).

    Chunk two's claim is won in the lane; chunk one's publish script then finds Redis gone,
    for 20 s. ``Scheduler._settle_ahead`` admits chunk two's answers, but ``_admit`` ends in
    ``_apply_cap`` -> ``take_cap_places``, which needs Redis too and raises: ``_settle_ahead``
    then returns chunk two's works as if its claim had never been made, and
    ``_on_backend_down`` queues them again as plain items. Once Redis is back the catch-up
    rule ("latest") drops 10:00:10 — a slot this replica WON — for 10:00:30. Expected:
    every entry's 10:00:10 published once, no claim left pending. Actual: chunk two's 100
    slots never published, their claims left pending for good (a lone replica).
    """
    scheduler = one_step_beat(
        redis_url, clock, burst_schedule(ENTRIES), fork_scheduler_max_concurrent=100_000
    )
    RedisAway(scheduler, clock, datetime(2026, 3, 2, 10, 0, 30, 600_000, tzinfo=timezone.utc))
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 33)
        sent = fired(redis_client)
        assert set(sent.values()) == {1}
        first = {entry for entry, slot in sent if slot == SLOT}
        missing = sorted({f"e{i:03}" for i in range(ENTRIES)} - first)
        pending = left_pending(redis_client)
        assert not missing and not pending, (len(missing), missing[:3], len(pending))
    finally:
        scheduler.close()


def test_a_paused_skip_of_the_lanes_claim_is_reported_once_when_the_cap_fails(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    reports: list[tuple[str, str, str, str]],
) -> None:
    """Promise 1 (every skip is reported with its reason) and "every due slot ends in exactly
    one of dispatched / skipped / failed" (round 9's first finding, with
    ``fork_scheduler_max_concurrent`` set).

    e150 is paused. Chunk two's claim runs in the lane and records e150's slot
    ``skipped:paused`` in Redis; then chunk one's publish script finds Redis gone (a 1 s
    blink). ``Scheduler._settle_ahead`` -> ``_admit`` reports ``paused``, then
    ``_apply_cap`` raises (Redis is away), so the works go to ``_on_backend_down`` as if never
    claimed: the same slot is reported again, ``redis_unavailable``, and once Redis is back
    it is claimed again and reported a third time (``claimed``). Expected: one report for
    e150's 10:00:10, ``paused``. Actual: ``paused``, ``redis_unavailable``, ``claimed``.
    """
    scheduler = one_step_beat(
        redis_url, clock, burst_schedule(ENTRIES), fork_scheduler_max_concurrent=100_000
    )
    redis_client.hset(KEYS.state("e150"), mapping={"paused": "1", "pause_note": ""})
    RedisAway(scheduler, clock, datetime(2026, 3, 2, 10, 0, 11, 500_000, tzinfo=timezone.utc))
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 14)
        said = [
            (kind, reason)
            for kind, entry, slot, reason in reports
            if entry == "e150" and slot == SLOT
        ]
        assert ("e150", SLOT) not in fired(redis_client)
        assert said == [("skipped", "paused")], said
    finally:
        scheduler.close()


def test_claims_won_before_the_cap_call_fails_in_a_long_outage_are_not_left_pending(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Failure table, "Redis becomes unreachable between winning a claim and the fence: ...
    asks about them again (takeover-only) once Redis is back, and publishes those still its
    own. The tasks arrive late, once."

    One chunk of 3 entries, ``fork_scheduler_max_concurrent`` set. The claim script wins the
    three slots; Redis goes away before ``take_cap_places`` (for 20 s).
    ``Scheduler._run_chunk`` treats an error of ``_admitted`` as "nothing of this chunk was
    claimed" (``chunk.error``) and ``_handle`` queues the works again as plain items; once
    Redis is back the catch-up rule ("latest") drops the won 10:00:10 for 10:00:30. (The same
    hole was in ``_run_chunk`` before the lane; ``tests/test_lane.py`` only tries a 1 s blink,
    where the plain claim renews the replica's own pending claim.) Expected: 10:00:10 of each
    entry published once, no pending claim left. Actual: none published, three claims left
    pending for good (a lone replica).
    """
    names = ["a", "b", "c"]
    schedule = {name: {"task": "t", "schedule": every(10).seconds} for name in names}
    scheduler = one_step_beat(redis_url, clock, schedule, fork_scheduler_max_concurrent=100)
    backend: Any = scheduler.backend
    real_claim, real_take = backend.claim, backend.take_cap_places
    back_at = datetime(2026, 3, 2, 10, 0, 30, 600_000, tzinfo=timezone.utc)
    down = [False]

    def claim(claims: Sequence[Claim]) -> Any:
        if down[0] and clock() < back_at:
            raise BackendUnavailableError("simulated: Redis away")
        return real_claim(claims)

    def take_cap_places(claims: Sequence[Claim], cap: int) -> Any:
        if clock() >= back_at:
            down[0] = False
        elif not down[0] and len(claims) == 3:
            down[0] = True  # Redis goes just after the claim script won the burst
        if down[0]:
            raise BackendUnavailableError("simulated: Redis away")
        return real_take(claims, cap)

    backend.claim = claim
    backend.take_cap_places = take_cap_places
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 33)
        sent = fired(redis_client)
        assert set(sent.values()) <= {1}
        assert {name for name, slot in sent if slot == SLOT} == set(names), sent
        assert [n for n in names if redis_client.hlen(KEYS.pending(n))] == []
    finally:
        scheduler.close()


def test_a_one_step_publish_whose_reply_is_lost_is_reported_dispatched_not_skipped(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    reports: list[tuple[str, str, str, str]],
) -> None:
    """Promise 1 (reports) and the one-step section: "A lost reply is safe too: asked again,
    the script answers that this replica published the slot already".

    The one-step script of the burst runs (the three messages are pushed and recorded sent),
    and its reply is lost as the connection drops (``publish_once`` raises
    ``BackendUnavailableError``). ``PublishPipeline._settle_once`` asks about the slots again
    (takeover-only), but the claim script, not ``PUBLISH_ONCE``, answers first: the slot is at
    the mark and no longer pending, so ``claimed`` — and the replica that published the
    slot reports it ``entry_skipped`` (``claimed``), never ``entry_dispatched``. (Also before
    the lane.) Expected: each slot reported ``dispatched`` once (it was published, by this
    replica). Actual: ``skipped`` / ``claimed``, no ``entry_dispatched``.
    """
    names = ["a", "b", "c"]
    schedule = {name: {"task": "t", "schedule": every(10).seconds} for name in names}
    scheduler = one_step_beat(redis_url, clock, schedule)
    backend: Any = scheduler.backend
    real_publish = backend.publish_once
    calls = [0]

    def publish_once(claims: Sequence[Claim], commands: Any) -> Any:
        calls[0] += 1
        replies = real_publish(claims, commands)
        if calls[0] == 1:
            raise BackendUnavailableError("simulated: the reply was lost")
        return replies

    backend.publish_once = publish_once
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 13)
        sent = fired(redis_client)
        assert {name: sent[(name, SLOT)] for name in names} == dict.fromkeys(names, 1)
        said = sorted(
            (entry, kind, reason)
            for kind, entry, slot, reason in reports
            if slot == SLOT and reason != "redis_unavailable"
        )
        assert said == [(name, "dispatched", "") for name in names], said
    finally:
        scheduler.close()
