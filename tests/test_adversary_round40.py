"""Adversary round 40: the change fence, the owner-grace delay of entries read late, the
config digest, and the stored timezone key.

Replicas run in one process on the session's real redis-server, ticked in turn on one
injected fake clock (``replica_helpers``); a Manager on the same fake clock edits the entries.
All five were found failing by round 40 and fixed: an entry read late waits the owner grace
for its chain's next slot too (not only its due ones), after an add as after a change; a
replica whose owner runs another ``beat_schedule`` asks at once about runtime entries too (a
static entry moved to a runtime one); a replica that cannot read a change keeps the version
of the definition it runs, so its claims stay fenced and a finished one deletes only that.
"""

from __future__ import annotations

from datetime import datetime

import redis
from replica_helpers import START, fired, make_app, schedulers
from runtime_edit_helpers import at, owned_by, reasons, slots_of, tick_until, times

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.testing import FakeClock

# -- 1. the owner-grace delay of an entry read late lets its next slot overtake the delayed one --


def test_a_replica_started_after_an_edit_loses_the_next_run_it_delays_by_the_owner_grace(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    skipped: list[tuple[str, datetime, str]],
) -> None:
    """Promise (guarantees.md, runtime row): "what `add` and `update` answer as `next_run`
    fires, even if a replica loads the change after it"; "A replica that reads an entry
    changed within the last `fork_scheduler_owner_grace` (it starts, or reads it late) asks
    about that entry's due slots only a grace after the change" (late, not lost); promise 1.

    Sequence (default owner_grace 1 s, one replica: a lone beat restarted during an edit):
    `x` every second. At 10:00:11.500 `update("x", every 1 s offset 510 ms)` answers
    next_run 10:00:11.510. The replica starts at 10:00:12.000: it reads `x` as changed 0.5 s
    ago, so its due slot 11.510 is queued (as a retry) at 11.500 + 1 s + 0.05 s = 12.550,
    while the entry's chain queues 12.510 at 12.510. The chain claims 12.510 first, which
    raises the mark past 11.510: asked at 12.550, the promised next_run answers `claimed`
    and is never published (nor reported as anything but `claimed`). With owner_grace 0
    (checked first) it is published. ``Scheduler._after_owed_slots`` delays the due slots but
    not the entry's chain (``_queue_read_late`` pushes the next slot at its own instant).
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
            tick_until([c], clock, at(13), step=0.01)  # beat wakes at each queued instant
            tick_until([c], clock, at(16))
            counts = fired(c.publisher)  # type: ignore[arg-type]
            assert max(counts.values()) == 1
            return slots_of("x", c)

    assert at(11.51) in run(0)  # owner_grace 0 (same timeline): the next_run fires, late
    redis_client.flushall()
    skipped.clear()
    published = run(1)
    assert at(12.51) in published
    assert at(11.51) in published, (
        f"next_run 10:00:11.510 never published; reported {reasons(skipped, 'x', at(11.51))}; "
        f"published {times(published)}"
    )


# -- 2. removal and add of the same name: the starting replica does not wait for the owed slot --


def test_a_replica_started_after_a_removal_and_add_claims_past_the_slot_a_dead_owner_owes(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Promise (Manager.remove: "A slot that was due before the removal still fires once if a
    replica had not published it yet"; guarantees.md runtime row: "A removal followed by an
    add of the same name before a replica's next refresh is, for that replica, such a
    change", and "A replica that reads an entry changed within the last
    `fork_scheduler_owner_grace` (it starts ...) asks about that entry's due slots only a grace
    after the change: another replica may still owe a slot of the earlier definition before
    the change (a dead owner's ...)"; settings.md: a dead owner costs a grace, never a slot).

    Round 39's test 4 with `remove` + `add` in place of `update`: `x` every second at .100,
    owned by replica-b, which is killed at 10:00:08.3; replica-a asks about b's slots a grace
    late (10:00:11.100 at 12.100). At 10:00:11.450 the operator removes `x` and at 11.500
    adds it again, every second at .900 (next_run 11.900). The replacement replica-c starts
    at 12.000: the entry's `added` is its latest change, so ``_after_owed_slots`` does not
    delay it; c claims 11.900 at once, the mark passes 11.100, and replica-a's claim of the
    slot the dead owner owed (due before the removal) answers `claimed`: never published,
    never reported skipped. With `update` in place of remove + add (round 39) it fires.
    """
    ids = ("replica-a", "replica-b")
    name = owned_by("replica-b", "x", ids)
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add(name, "t", every(1).seconds.offset(milliseconds=100))
    with schedulers(redis_url, fork_scheduler_owner_grace=1) as make:
        a = make(clock, "replica-a")
        b = make(clock, "replica-b")
        tick_until([a, b], clock, at(8.3))  # replica-b is killed: never ticked again
        tick_until([a], clock, at(11.45))
        manager.remove(name)
        clock.set(at(11.5))
        job = manager.add(name, "t", every(1).seconds.offset(milliseconds=900))
        assert job.next_run == at(11.9)
        tick_until([a], clock, at(12.0))
        c = make(clock, "replica-c")
        tick_until([a, c], clock, at(16))
        counts = fired(a.publisher, b.publisher, c.publisher)  # type: ignore[arg-type]
        published = slots_of(name, a, b, c)
    assert max(counts.values()) == 1
    assert at(11.9) in published
    assert at(11.1) in published, (
        f"10:00:11.100 (due before the removal, owed by the dead owner) never published; "
        f"reported {reasons(skipped, name, at(11.1))}; published {times(published)}"
    )


# -- 3. an entry moved from beat_schedule to a runtime entry during a rolling deploy ------------


def test_a_rolling_move_of_a_static_entry_to_a_runtime_one_defers_the_new_slot_to_the_old_owner(
    redis_url: str,
    redis_client: redis.Redis,
    clock: FakeClock,
    skipped: list[tuple[str, datetime, str]],
) -> None:
    """Promise (settings.md, fork_scheduler_owner_grace): the owner's record is trusted only
    under the very same view; "During a rolling deploy of a changed schedule (the owner's
    record names another `beat_schedule`), each replica asks about every slot ... at once, as
    with `owner_grace = 0`"; guarantees.md, rolling-deploy row: "An entry present on at least
    one healthy replica keeps firing"; manager.md: a runtime entry written by an app that does
    not know the static entry of that name is skipped by the replicas that have it (they keep
    theirs); promise 1.

    Sequence: the new release moves `x` out of `beat_schedule` and the operator adds it as a
    runtime entry ("every 10 s offset 9.5 s") during the rolling deploy. replica-a (old
    release, static `x` every 10 s, the owner) skipped the runtime entry; replica-b (new
    release) runs the runtime one. Round 39's fix asks at once only for *static* entries
    whose owner runs another `beat_schedule` (``_work_for``: ``entry.source != "runtime"``),
    so replica-b defers its 10:00:09.500 to the grace (10.500); replica-a's static 10:00:10
    raises the mark past it and it answers `claimed`. With owner_grace 0 (checked first, same
    timeline) both slots are published.
    """
    name = owned_by("replica-a", "x")
    old = {name: {"task": "t", "schedule": every(10).seconds}}

    def run(grace: float) -> list[datetime]:
        clock.set(START)
        manager = Manager(make_app(redis_url), clock=clock)  # the new release: no static x
        manager.add(name, "t", every(10).seconds.offset(seconds=9.5), replace_existing=True)
        with schedulers(redis_url, fork_scheduler_owner_grace=grace) as make:
            a = make(clock, "replica-a", beat_schedule=old)
            b = make(clock, "replica-b")
            tick_until([a, b], clock, at(22))
            counts = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
            assert max(counts.values()) == 1
            return slots_of(name, a, b)

    assert at(9.5) in run(0)  # owner_grace 0: the runtime definition's slot fires
    redis_client.flushall()
    skipped.clear()
    published = run(1)
    assert at(10) in published
    assert at(9.5) in published, (
        f"the runtime definition's 10:00:09.500 was never published (reported "
        f"{reasons(skipped, name, at(9.5))}); published {times(published)}"
    )


# -- 4. a change one replica cannot read: it keeps the replaced definition, past the fence -----


def test_a_replica_that_cannot_read_a_change_keeps_firing_the_replaced_definition_unfenced(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Promise (guarantees.md, runtime row): "Each change also writes the entry's version and
    instant into its state (`defined`), so a replica that has not read the change yet is
    refused the slots of the definition it replaced that come after the change (skip reason
    `changed` ...)"; failure-table row "A runtime entry stored in Redis is corrupted": "That
    entry is skipped ... Error `runtime entry skipped: ...`"; one run per slot of the entry's
    definition.

    Sequence (no ownership; a rolling configuration change adds a calendar): `x` every 10 s.
    replica-a and the Manager know the calendar `holidays`; replica-b (not restarted yet) does
    not. At 10:00:10.350 `update("x", schedule=every 10 s offset 5 s, calendar="holidays")`.
    replica-a runs the new definition (15, 25, ...). replica-b logs `runtime entry skipped`
    for it, but keeps scheduling the replaced definition, and drops the version it read
    (``RuntimeEntries._parse`` pops ``versions``), so its claims go out as "1" without a
    version and the fence never applies: it publishes 10:00:20 and 10:00:30 of the replaced
    definition, within seconds of the change, interleaved with the new one.
    """
    calendars = {"holidays": ["2026-12-25"]}
    manager = Manager(make_app(redis_url, fork_scheduler_calendars=calendars), clock=clock)
    manager.add("x", "t", every(10).seconds)
    with schedulers(redis_url) as make:
        a = make(clock, "replica-a", fork_scheduler_calendars=calendars)
        b = make(clock, "replica-b")
        tick_until([a, b], clock, at(10.35))
        job = manager.update("x", schedule=every(10).seconds.offset(seconds=5), calendar="holidays")
        assert job.next_run == at(15)
        tick_until([a, b], clock, at(32))
        counts = fired(a.publisher, b.publisher)  # type: ignore[arg-type]
        published = slots_of("x", a, b)
    assert max(counts.values()) == 1
    assert at(15) in published and at(25) in published
    stale = [s for s in published if s > at(10.35) and s.second % 10 == 0]
    assert not stale, (
        f"slots of the replaced definition published after the change: {times(stale)} "
        f"(reported changed: {[s for n, s, r in skipped if n == 'x' and r == 'changed']})"
    )


def test_a_replica_that_cannot_read_a_max_runs_raise_finishes_and_deletes_the_updated_entry(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Promise (guarantees.md, row "An entry uses up `max_runs`"): "A finished runtime entry
    is removed — only the definition that ran out: an update made since (`max_runs` raised
    before a replica saw it) is kept, and the entry fires again"; runtime row: a replica that
    has not read a change is refused the replaced definition's slots after it (`changed`).

    The same root cause as the test above (``RuntimeEntries._parse`` drops the version of an
    entry it cannot read, but the replica keeps running the replaced definition). `x` every
    second, max_runs 3 (fires 1, 2, 3). At 10:00:03.500 the operator raises max_runs to 10
    and names the calendar `holidays`, which replica-b does not know yet (rolling
    configuration change). replica-b keeps the old definition (max_runs 3) without a version:
    its claim of 10:00:05 is not fenced, answers `finished`, and ``Scheduler._retire`` deletes
    the entry with ``expected_version=None`` (the version it read is gone), so the update made
    since is removed for every replica and `x` never fires again.
    """
    calendars = {"holidays": ["2026-12-25"]}
    manager = Manager(make_app(redis_url, fork_scheduler_calendars=calendars), clock=clock)
    manager.add("x", "t", every(1).seconds, max_runs=3)
    with schedulers(redis_url) as make:
        a = make(clock, "replica-a", fork_scheduler_calendars=calendars)
        b = make(clock, "replica-b")
        tick_until([b, a], clock, at(3.5))
        job = manager.update("x", max_runs=10, calendar="holidays")
        assert job.max_runs == 10
        tick_until([b, a], clock, at(9.5))
        published = slots_of("x", a, b)
        stored = redis_client.hget("scheduler:{runtime}:entries", "x")
        assert stored is not None, (
            f"the entry updated to max_runs 10 was deleted as finished; "
            f"published {times(published)}"
        )
        tick_until([b, a], clock, at(12))  # its tenth run: then it is finished, and removed
        published = slots_of("x", a, b)
    assert len(published) == 10, times(published)
