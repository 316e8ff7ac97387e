"""Adversary round 41: the change fence (``changed``), the re-ask of refused slots, the
owner-grace hold of entries read late (``_after_owed_slots``) and the config digest.

Replicas run in one process on the session's real redis-server, ticked in turn on one
injected fake clock (``replica_helpers``); a Manager on the same fake clock edits the entries.
All three were found failing by round 41 and fixed: an entry's hold is kept per entry until
it has passed (a clock correction no longer pulls the held slots earlier, and a change read
during the hold queues its slots after it), and a slot refused as ``changed`` is asked again
only when it comes after the change read (not one refused by an earlier change).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from replica_helpers import START, fired, make_app, make_scheduler, schedulers
from runtime_edit_helpers import IDS, at, owned_by, reasons, slots_of, tick_until, times

from celery_fork_scheduler import Manager, Scheduler, every
from celery_fork_scheduler import scheduler as scheduler_module
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.redis_clock import RedisClock
from celery_fork_scheduler.testing import FakeClock


def skewed_replica(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    clock: FakeClock,
    replica_id: str,
    behind: float,
    **conf: Any,
) -> Scheduler:
    """A replica whose host clock is ``behind`` s behind Redis's (the shared fake clock is
    Redis's clock here), measured as beat does in production: at start-up (``follow``) and at
    every refresh, against Redis ``TIME`` (answered from the fake clock)."""
    host: Callable[[], datetime] = lambda: clock() - timedelta(seconds=behind)  # noqa: E731

    class Following(RedisClock):
        def __init__(self, *args: Any, follow: bool, **kwargs: Any) -> None:
            super().__init__(*args, follow=True, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(scheduler_module, "RedisClock", Following)
        replica = make_scheduler(
            redis_url,
            host,  # type: ignore[arg-type]
            replica_id=replica_id,
            monotonic=lambda: clock().timestamp(),
            **conf,
        )
    return replica


# -- 1. a host clock a little off Redis's undoes the owner-grace hold of an entry read late ------


def test_a_skewed_replica_started_after_an_edit_claims_past_the_slot_a_dead_owner_owes(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    skipped: list[tuple[str, datetime, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Promise (guarantees.md runtime row): "A replica that reads an entry added or changed
    within the last `fork_scheduler_owner_grace` (it starts, or reads it late) asks about that
    entry's slots only a grace after the change: another replica may still owe a slot of the
    earlier definition before the change (a dead owner's, asked about a grace late)"; promise 2
    ("a skewed host neither fires early nor sleeps through its slots": replicas schedule on
    Redis's clock); settings.md owner_grace: a dead owner costs a grace, never a slot.

    Round 39's test 4, with the replacement replica's host clock 0.5 s behind Redis (measured
    at start-up, as beat does). `x` every second at .100, owned by replica-b, killed at
    10:00:08.3; replica-a asks about its slots a grace late (10:00:11.100 at 12.100). At
    11.500 `update("x", every 1 s offset 900 ms)` (next_run 11.900). replica-c starts at 12.000
    and holds 11.900 until 12.550 (``_after_owed_slots``). At its first tick
    ``_follow_corrections`` compares the offset measured at start-up (+0.5 s) with
    ``_seen_offset`` (initialised to 0, never to the start-up offset) and pulls every queued
    item to ``max(publish_at, now)``: the held 11.900 is claimed at once, the mark passes
    11.100, and replica-a's claim of the owed slot answers `claimed`: never published, never
    reported skipped. Without the skew (round 39's test) it fires.
    """
    name = owned_by("replica-b", "x", IDS)
    monkeypatch.setattr(RedisBackend, "server_time", lambda self: clock())

    def run(behind: float) -> list[datetime]:
        clock.set(START)
        manager = Manager(make_app(redis_url), clock=clock)
        manager.add(name, "t", every(1).seconds.offset(milliseconds=100), replace_existing=True)
        with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
            a = make(clock, "replica-a")
            b = make(clock, "replica-b")
            tick_until([a, b], clock, at(8.3))  # replica-b is killed: never ticked again
            tick_until([a], clock, at(11.5))
            job = manager.update(name, schedule=every(1).seconds.offset(milliseconds=900))
            assert job.next_run == at(11.9)
            tick_until([a], clock, at(12.0))
            c = skewed_replica(
                monkeypatch, redis_url, clock, "replica-c", behind, fork_scheduler_owner_grace=1
            )
            try:
                assert c.redis_clock.offset == timedelta(seconds=behind)
                assert c.now() == clock()
                tick_until([a, c], clock, at(16))
                counts = fired(a.publisher, b.publisher, c.publisher)  # type: ignore[arg-type]
            finally:
                c.close()
            assert max(counts.values()) == 1
            return slots_of(name, a, b, c)

    assert at(11.1) in run(0.0)  # a host clock on time (round 39's test): the owed slot fires
    redis_client.flushall()
    skipped.clear()
    published = run(0.5)
    assert at(11.9) in published
    assert at(11.1) in published, (
        f"10:00:11.100 (due under the definition in force, owed by the dead owner) never "
        f"published; reported {reasons(skipped, name, at(11.1))}; published {times(published)}"
    )


# -- 2. refused slots of a replaced definition are asked again after a later revert ----------


def test_a_revert_after_an_unreadable_change_publishes_the_slots_the_fence_refused(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Promise (guarantees.md runtime row): "a replica that has not read the change yet is
    refused the slots of the definition it replaced that come after the change (skip reason
    `changed` ...; also when the replica cannot read the new definition, say a calendar it
    does not know yet: it keeps running the one it read, fenced)"; "every replica schedules
    the entry from its first slot after that instant" (the revert's); events.md `changed`: "a
    slot the new definition has too is asked about again".

    Sequence (no ownership; a rolling configuration change adds a calendar): `x` every 2 s
    (D1). replica-a and the Manager know the calendar `holidays`, replica-b does not. At
    10:00:10.350 `update("x", every 10 s offset 5 s, calendar="holidays")` (D2); replica-b
    cannot read it and keeps D1, fenced: its claims of 12, 14, 16 are refused `changed`
    (right). replica-a publishes D2's 10:00:15. At 10:00:16.500 the operator puts D1 back
    (`add(..., replace_existing=True)`, next_run 18). replica-b reads it, finds the definition
    it runs (``put_entry`` False) and ``_ask_again_as_changed`` re-asks *every* slot refused
    since it read D2 (``_refused_as_changed`` is emptied only by a poll that returns an Update;
    the quiet polls after each refusal keep it): 10:00:16, after D2's mark, is won and
    published at about 17.3, a slot of neither the definition then in force (D2) nor of the
    revert (scheduled from 16.500). The refusals were answers to D2's change, not to the
    revert's.
    """
    calendars = {"holidays": ["2026-12-25"]}
    manager = Manager(make_app(redis_url, fork_scheduler_calendars=calendars), clock=clock)
    manager.add("x", "t", every(2).seconds)
    with schedulers(redis_url) as make:
        a = make(clock, "replica-a", fork_scheduler_calendars=calendars)
        b = make(clock, "replica-b")
        tick_until([a, b], clock, at(10.35))
        job = manager.update("x", schedule=every(10).seconds.offset(seconds=5), calendar="holidays")
        assert job.next_run == at(15)
        tick_until([a, b], clock, at(16.5))
        assert "changed" in reasons(skipped, "x", at(16))  # replica-b was fenced, as promised
        job = manager.add("x", "t", every(2).seconds, replace_existing=True)
        assert job.next_run == at(18)
        tick_until([a, b], clock, at(21))
        counts = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
        published = slots_of("x", a, b)
    assert max(counts.values()) == 1
    assert at(15) in published and at(18) in published
    stale = [s for s in published if at(10.35) < s < at(16.5) and s != at(15)]
    assert not stale, (
        f"slots of the replaced definition, refused `changed` while D2 was in force, published "
        f"after the revert: {times(stale)}; published {times(published)}"
    )


# -- 3. a second edit read during the owner-grace hold passes the held next_run ---------------


def test_a_second_edit_during_the_hold_of_a_restarted_replica_loses_the_first_edits_next_run(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    skipped: list[tuple[str, datetime, str]],
) -> None:
    """Promise (guarantees.md runtime row): "what `add` and `update` answer as `next_run`
    fires, even if a replica loads the change after it"; "Slots of the earlier definition
    already due at that instant still fire"; "A replica that reads an entry ... changed within
    the last `fork_scheduler_owner_grace` (it starts ...) asks about that entry's slots only a
    grace after the change" (late, not lost); promise 1.

    Sequence (one replica, owner_grace 1 s: a lone beat restarted during two edits): `x` every
    second. At 10:00:11.500 `update("x", every 1 s offset 510 ms)` answers next_run 11.510
    (E1). The replica starts at 12.000, reads `x` changed 0.5 s ago and holds 11.510 until
    12.550 (``_after_owed_slots``, round 40). At 12.020 a second `update("x", every 1 s offset
    30 ms)` answers next_run 12.030 (E2). The replica reads E2 at its first tick, a normal
    change (``put_entry``: no hold), and claims 12.030 at once; the mark passes 11.510, which
    answers `claimed` at 12.550: E1's next_run, due before E2 was made, is never published and
    reported only as `claimed`. With owner_grace 0 (same timeline, checked first) both fire.
    Not the documented "changed twice within one refresh" limit: the replica read E1 at
    start-up and E2 at a later refresh.
    """

    def run(grace: float) -> list[datetime]:
        clock.set(START)
        manager = Manager(make_app(redis_url), clock=clock)
        manager.add("x", "t", every(1).seconds, replace_existing=True)
        clock.set(at(11.5))
        job = manager.update("x", schedule=every(1).seconds.offset(milliseconds=510))
        assert job.next_run == at(11.51)
        clock.set(at(12.0))
        with schedulers(redis_url, fork_scheduler_owner_grace=grace) as make:
            c = make(clock, "replica-c")
            clock.set(at(12.02))
            job = manager.update("x", schedule=every(1).seconds.offset(milliseconds=30))
            assert job.next_run == at(12.03)
            tick_until([c], clock, at(13), step=0.01)  # beat wakes at each queued instant
            tick_until([c], clock, at(15))
            counts = fired(c.publisher)  # type: ignore[arg-type]
            assert max(counts.values()) == 1
            return slots_of("x", c)

    assert at(11.51) in run(0)  # owner_grace 0 (same timeline): E1's next_run fires
    redis_client.flushall()
    skipped.clear()
    published = run(1)
    assert at(12.03) in published
    assert at(11.51) in published, (
        f"E1's next_run 10:00:11.510 never published; reported {reasons(skipped, 'x', at(11.51))}; "
        f"published {times(published)}"
    )
