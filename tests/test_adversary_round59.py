"""Adversary round 59: the newest changes (the ``disabled`` state field, the claim script's
early check at slot + jitter offset, the clock re-based after the refresh, backfilled runs'
skips) and what sits beside them.

Every test here was found failing by round 59 and fixed (dc2ebf6); each docstring tells the
scenario as it failed.

Each test's docstring names the promise (with its page), the sequence, what was expected and
what happened, and where. Claims are on a real ``redis-server`` whose clock is the replicas'
fake clock (``virtual_time_redis``), so leases and Redis ``TIME`` follow the test's clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import restart_helpers
from hand_driven_helpers import HandDrivenWorker
from hand_driven_helpers import RecordingBeat as Beat
from restart_helpers import (  # noqa: F401 - the fixtures beats and workers
    BASE,
    KEYS,
    beat_with_worker,
    beats_fixture,
    slots_of,
    t,
    workers_fixture,
)
from test_adversary_round53 import BrokerDownOnce, tick_until
from virtual_time_redis import virtual_redis

from celery_fork_scheduler import Manager
from celery_fork_scheduler import held as held_module
from celery_fork_scheduler.backends import Claim, ClaimOutcome
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import Settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.jitter import jitter_offset
from celery_fork_scheduler.ownership import owner_of

TASK = "adv59.job"
ROOT = Path(__file__).resolve().parent.parent

make_app = partial(restart_helpers.make_app, "adv59", TASK, fork_scheduler_max_retries=0)


# -- 1. a jittered slot published after an empty Redis restart is refused by the write-back ------


def test_a_jittered_slot_publishable_after_an_empty_redis_restart_is_refused_by_the_write_back(
    beats: list[Any], tmp_path: Path, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md, failure row "Redis loses data": the first claim that finds
    the entry's mark missing "writes it back, raised to the instant the data was lost plus the
    0.5 s early tolerance, so no slot up to that moment -- which another replica may already
    have claimed and published -- can be won again, and every slot after it still fires";
    and, in the same row, "A jittered slot is judged at its publish instant (slot plus offset),
    so one published after the start is claimed as usual". Promise 2: "An entry with jitter is
    not claimed nor published before its slot plus the slot's offset" (since 7b887da the claim
    script itself refuses it: nobody can have claimed such a slot before that instant).
    docs/schedules.md, Jitter: "jitter changes *when* a slot is published, never *which* slots
    exist".

    Sequence (one replica; ``e`` every 60 s, ``jitter=50``: 10:01:00's offset is 37.6 s, so it
    is published at 10:01:37.6): 10:00:00 is published. At 10:00:50 Redis crashes and comes
    back empty at 10:01:03 (no persistence). The replica ticks on to 10:02:10.

    Expected: 10:01:00 is published at 10:01:37.6 -- its publish instant is 34 s after Redis's
    start, so no replica could have claimed it before the data went (the claim script answers
    ``early`` until slot + offset), exactly the case round 55 fixed for the hour rule after a
    restart that kept its data. What happens: its claim finds no mark, writes one back at
    Redis's start + 0.5 s (10:01:03.5) compared with the *nominal* slot, and the slot, "at or
    below the mark and not pending", answers ``claimed``: never published (reported only as
    ``claimed`` at DEBUG, the answer for a slot another replica handled). With an hourly entry
    and a 30-minute jitter, a Redis restart loses every slot whose nominal instant fell before
    the start, up to half an hour of publishes.

    Where: backends/lua.py ``_CLAIM_BODY``: ``restored = math.max(known, lost_at + ARGV[4])``
    is compared with ``slot`` (nominal) in ``if slot > hwm``; the restart rule next to it
    (``due_before_restart(slot + ARGV[19])``) and the early check (``due_at``) count the offset,
    the write-back does not. Suggested fix: judge the write-back against the slot's publish
    instant (refuse only when slot + offset <= lost_at + tolerance), e.g. by writing the mark
    back as the latest slot whose publish instant is at or before that instant, or by letting
    a slot above ``known`` whose publish instant is after ``lost_at`` past the restored mark.
    """
    offset = jitter_offset("e", t(60), timedelta(seconds=50))
    assert timedelta(seconds=30) < offset, offset  # published well after the restart
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=60), "jitter": 50}}
        beat = Beat(make_app(server.url, schedule), clock, "replica-a")
        beats.append(beat)
        beat.scheduler.setup_schedule()
        beat.run_until(t(50))
        assert slots_of(beat) == [t(0)]
        server.crash()  # no persistence: back empty
        server.server.drop_data()
        clock.set(t(63))
        server.server.start()
        beat.run_until(t(130))

    reasons = [reason for entry, slot, reason in skipped if entry == "e" and slot == t(60)]
    assert t(60) in slots_of(beat), (
        f"10:01:00 (publish instant {(t(60) + offset).time()}, after Redis's start at "
        f"10:01:03) is not published: reported {reasons}"
    )


# -- 2. a hand-over whose publish fails across a disable and an enable is held back again --------


@pytest.mark.parametrize("change", ["disable_enable", "remove_add"])
def test_a_held_run_whose_publish_fails_across_a_disable_and_enable_is_held_back_and_sent(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    """Promise: docs/singleton.md, "Pause, disable and removal": "removing a runtime entry, or
    disabling it (``Manager.update(name, enabled=False)``, ``update_many``), deletes its held
    runs in the same write, and adding the name again (or enabling it) starts without one; a
    handed-over run whose publish fails after such a change is not held back again";
    docs/guarantees.md, runtime row: "Slots of the earlier definition already due at that
    instant still fire (unless the change disables the entry or removes it) ... A change that
    disables a runtime entry deletes its held ``buffer_one``/``buffer_all`` runs in the same
    write, as a removal does"; docs/redis-layout.md, ``disabled``: "so none is held back after
    the disable deleted its held runs".

    Sequence (one replica, one worker; runtime entry ``rt`` every 5 s, ``buffer_all``): the run
    of 10:00:00 starts; 10:00:05 is queued behind it. At 10:00:06.5 the run ends: RELEASE hands
    10:00:05 over and the worker publishes it. While that publish is under way (a slow broker)
    the operator disables ``rt`` and, 0.2 s later, enables it again (or: removes it and adds it
    again); then the publish fails (refused before anything left).

    Expected: 10:00:05 is gone with the disable (removal) -- as round 58's fix does when the
    enable comes after the failure -- and only slots after the enable fire. What happens:
    ``GIVE_BACK_HELD`` finds no ``disabled`` (the enable deleted it) nor ``removed`` (the add
    deleted it: a fresh field), holds the message back again (as a *string*, ``SET NX``, in a
    ``buffer_all`` key the disable had deleted), and the next claim (10:00:10, no run holds the
    marker) hands it over: 10:00:05 is published at 10:00:10.2, 3.5 s after the re-enable, a
    slot of the disabled (removed) definition fired after the change.

    Where: backends/lua.py ``GIVE_BACK_HELD``: ``gone`` reads the state's current
    ``disabled``/``removed`` fields only, which an enable / re-add clears; nothing tells the
    script that the queue it gives back to was deleted by a change made since the hand-over.
    Suggested fix: have RELEASE note the hand-over's definition (the state's ``defined``
    version, or a hand-over epoch bumped by every write that deletes the held runs) and let
    GIVE_BACK_HELD hold back again only when it is unchanged.
    """
    sent: list[Any] = []
    calls = [0]
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-3))
        app = make_app(server.url, {})
        manager = Manager(app, clock=clock)
        manager.add("rt", TASK, "every 5 seconds", overlap="buffer_all")

        def publish(self: Any, occurrence: Any) -> None:
            calls[0] += 1
            if calls[0] == 1:  # the disable and the enable land while this publish is under way
                if change == "disable_enable":
                    manager.update("rt", enabled=False)
                    clock.advance(0.2)
                    manager.update("rt", enabled=True)
                else:
                    manager.remove("rt")
                    clock.advance(0.2)
                    manager.add("rt", TASK, "every 5 seconds", overlap="buffer_all")
                raise ValueError("the broker refused the message")
            sent.append(occurrence)

        monkeypatch.setattr(held_module.CeleryPublisher, "publish", publish)
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(1))
        [first] = [o for o in beat.publisher.occurrences if o.entry == "rt"]
        assert worker.start(first.task_id, dict(first.headers))
        beat.run_until(t(6))  # 10:00:05 is queued behind the run of 10:00:00
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("rt")) == 1
        clock.set(t(6.5))
        worker.end(first.task_id)  # hands 10:00:05 over; its publish fails across the change
        kind = client.type(KEYS.buffered("rt"))
        held_after = (
            client.lrange(KEYS.buffered("rt"), 0, -1)
            if kind == b"list"
            else client.get(KEYS.buffered("rt"))
        )
        beat.run_until(t(25))
        published = sorted(o.slot for o in sent + beat.publisher.occurrences if o.entry == "rt")

    stale = [s.time().isoformat() for s in published if t(1) < s < t(6.6)]
    assert not stale, (
        f"10:00:05, held back before the change, published after it: {stale} "
        f"(held after the change: {held_after})"
    )


# -- 3. a claim won after a removal (of a slot due before it) by a replica that then dies --------


def test_a_claim_won_after_the_other_replica_read_the_removal_is_never_taken_over(
    beats: list[Any], tmp_path: Path, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md promise 4, "No silent loss": "If the replica that won a
    slot dies before it starts publishing it, another replica publishes it after the claim
    lease, with the same task id"; promise 1 (every slot published, each exception
    **reported**); the runtime row: "a slot claimed before the entry was removed or disabled is
    still published (its claim counted the run) ... a replica that reads the removal or the
    disable ... asks about each unsent claim of it, takeover-only, so a dead owner's claim is
    not left pending"; and docs/manager.md ``remove``: "A slot that was due before the removal
    still fires once if a replica had not published it yet".

    Sequence (replicas A and B, ``fork_scheduler_owner_grace`` 1 s; runtime entry ``rt`` every
    5 s, owned by A): A is late for 10:00:05 (a busy host: no tick from 10:00:04.9 to
    10:00:05.3). At 10:00:05.3 A's tick reads the runtime changes (nothing new); just after
    that read the operator removes ``rt``; B's refresh reads the removal right then and asks
    about ``rt``'s unsent claims (``Scheduler._take_over_unsent``: none yet). A's tick goes on
    and claims 10:00:05: won, since the slot is due before the removal (the script lets a
    replica that has not seen the removal claim those). A's broker cannot be reached for a
    moment (the claim stays A's, unfenced), and A dies. B runs on to 10:01:00.

    Expected: B (or some replica) takes the claim over after the lease, or the slot is at least
    reported. What happens: 10:00:05 stays A's pending claim (``state: claimed``, ``runs: 1``)
    until the removed entry's keys expire a day later: never published, no ``entry_skipped``,
    no history item (a replica started after the removal does not know ``rt`` either, so its
    start-up read of unsent claims skips it). A disable is not exposed: the claim script
    refuses every new slot after it.

    Where: scheduler.py ``Scheduler._take_over_unsent`` reads the entry's unsent claims once,
    when the replica reads the removal; backends/lua.py ``_CLAIM_BODY`` still lets a replica
    that has not read the removal win a slot due before it *after* the removal was written
    (``removed and slot > tonumber(removed)`` refuses only later slots). A claim won after the
    others looked is asked about by nobody. Suggested fix: refuse (``removed``) every new claim
    once the state says removed, as ``disabled`` does (the docs already say a removal's due
    slot "fires once if a replica had not published it yet": reword, or) keep the removed
    entry's unsent claims watched for a lease after the removal (e.g. ask again one claim
    lease after reading the removal).
    """
    name = "rt"
    assert owner_of(name, ["replica-a", "replica-b"]) == "replica-a"
    conf = {"fork_scheduler_owner_grace": 1}
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        manager = Manager(make_app(server.url, {}, **conf), clock=clock)
        manager.add(name, TASK, "every 5 seconds")
        down = BrokerDownOnce()
        a = Beat(make_app(server.url, {}, **conf), clock, "replica-a", down)
        b = Beat(make_app(server.url, {}, **conf), clock, "replica-b")
        beats.extend([a, b])
        a.scheduler.setup_schedule()
        b.scheduler.setup_schedule()
        tick_until(clock, [a, b], t(4.9), 0.1)
        assert b.scheduler.ownership.other_owner(name) == "replica-a"
        tick_until(clock, [b], t(5.3), 0.1)  # A is late (a busy host): 10:00:05 not asked yet
        assert slots_of(b, name) == []

        real_poll = a.scheduler.runtime.poll
        done = [False]

        def poll(static_names: Any) -> Any:
            update = real_poll(static_names)  # A reads nothing new ...
            if not done[0]:
                done[0] = True
                # ... and the removal lands just after A's read, before A's claims:
                manager.remove(name)
                b.scheduler._next_refresh = 0.0  # B's refresh falls now: it reads the removal
                b.scheduler.tick()
                assert name not in b.scheduler.entries  # B read the removal
            return update

        a.scheduler.runtime.poll = poll  # type: ignore[method-assign]
        a.scheduler._next_refresh = 0.0
        down.down = True
        a.scheduler.tick()  # A wins 10:00:05 (due before the removal); its broker is away
        assert done[0]
        client = redis.Redis.from_url(server.url)
        assert client.hexists(KEYS.pending(name), str(int(t(5).timestamp() * 1_000_000)))
        # A dies here (SIGKILL): it never ticks again.
        tick_until(clock, [b], t(60), 0.1)
        pending = client.hgetall(KEYS.pending(name))
        state = client.hgetall(KEYS.state(name))

    published = slots_of(a, name) + slots_of(b, name)
    reported = [reason for n, slot, reason in skipped if n == name and slot == t(5)]
    assert t(5) in published or reported, (
        f"10:00:05 was won by A (dead) after B read the removal, then neither published nor "
        f"reported; still pending: {pending}, state: {state}"
    )


# -- 4. docs/schedules.md says the claim script compares the nominal slot; it does not any more --


def test_schedules_md_says_the_claim_script_checks_the_nominal_slot_but_it_checks_slot_plus_offset(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Docs say X, code does Y. docs/schedules.md, Jitter, "Not before": "a jittered slot may
    leave up to 0.5 s before its instant, never more; the claim script's own check still
    compares the nominal slot with Redis ``TIME``". Since 7b887da the claim script compares
    slot + offset (ARGV[19]) with Redis ``TIME`` (docs/guarantees.md, "How a slot is
    published", step 1, says so: "If the slot (plus its jitter offset) is more than 0.5 s in
    the future"). So the two pages disagree, and schedules.md's description is wrong.

    Sequence: one claim of a slot whose nominal instant is 2 s past on Redis's clock, with a
    20 s jitter offset. schedules.md's description says the script's check passes it (only the
    replica's own clock holds it); the script answers ``early`` (wait ~18 s).

    Where: docs/schedules.md ("Not before") was not updated with backends/lua.py
    ``_CLAIM_BODY``'s ``due_at`` check. Suggested fix: the sentence should say the claim
    script refuses a slot before slot + offset (0.5 s tolerance) on Redis ``TIME``.
    """
    text = " ".join((ROOT / "docs" / "schedules.md").read_text().split())
    says_nominal = "the claim script's own check still compares the nominal slot with Redis `TIME`"
    backend = RedisBackend.from_url(redis_url, Settings())
    try:
        seconds, micros = redis_client.time()
        now = datetime.fromtimestamp(seconds, timezone.utc) + timedelta(microseconds=micros)
        slot = now.replace(microsecond=0) - timedelta(seconds=2)  # the nominal slot has passed
        claim = Claim("jittered", slot, task_id_for("jittered", slot), offset_us=20_000_000)
        [result] = backend.claim([claim])
    finally:
        backend.close()
    assert result.outcome is ClaimOutcome.EARLY
    assert "the slot plus its offset" in text
    if says_nominal in text:
        assert result.outcome is not ClaimOutcome.EARLY, (
            f"docs/schedules.md (Jitter, 'Not before'): {says_nominal!r}; yet a claim of a slot "
            f"2 s past with a 20 s offset answers {result.outcome.value} "
            f"(wait {result.retry_after:.1f} s): the script compares slot + offset"
        )
