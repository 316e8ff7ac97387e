"""Adversary round 58: the newest changes (a548d38, 2bae045, 6635559, 5bad463): the clock
re-measured after the tick's refresh (a step Redis cannot measure taken back locally), the
``disabled`` state field the claim script refuses new claims with, backfilled runs' skips.
All found failing by round 58, fixed: a replica that reads a disable or a removal (or reads an
entry disabled, at start) asks takeover-only about the entry's unsent claims
(``Scheduler._take_over_unsent``), and ``GIVE_BACK_HELD`` holds nothing back again for an
entry disabled or removed since the hand-over.

Each test's docstring names the promise (with its page), the sequence, what was expected and
what happened, and where. Claims are on a real ``redis-server`` whose clock is the replicas'
fake clock (``virtual_time_redis``), so leases and Redis ``TIME`` follow the test's clock.
"""

from __future__ import annotations

from datetime import datetime
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
    t,
    workers_fixture,
)
from test_adversary_round53 import BrokerDownOnce, tick_until
from virtual_time_redis import virtual_redis

from celery_fork_scheduler import Manager
from celery_fork_scheduler import held as held_module
from celery_fork_scheduler.ownership import owner_of

TASK = "adv58.job"

make_app = partial(restart_helpers.make_app, "adv58", TASK, fork_scheduler_max_retries=0)


def slots_of(beat: Any, name: str) -> list[datetime]:
    return [o.slot for o in beat.publisher.occurrences if o.entry == name]


@pytest.mark.parametrize("change", ["disable", "remove"])
def test_a_dead_owners_unsent_claim_of_an_entry_disabled_within_the_grace_is_never_taken_over(
    beats: list[Any], tmp_path: Path, skipped: list[tuple[str, datetime, str]], change: str
) -> None:
    """Promise: docs/guarantees.md promise 4, "No silent loss": "If the replica that won a
    slot dies before it starts publishing it, another replica publishes it after the claim
    lease, with the same task id"; promise 1 (every slot published, each exception
    **reported**); and the runtime row: "retries of a slot (pending, takeover) follow the entry
    by name: a slot claimed before the entry was removed or disabled is still published (its
    claim counted the run), also when ... another replica takes it over".

    Sequence (replicas A and B with ownership on: ``fork_scheduler_owner_grace`` 1 s; runtime
    entry ``rt1`` every 5 s, owned by B): at 10:00:05.02 B wins 10:00:05 (``runs`` 1) but its
    broker cannot be reached for a moment, so the claim stays B's, unfenced; B then dies
    (SIGKILL: it never ticks again). A trusts B's progress record and has parked ``rt1``'s
    chain under B (or deferred it: it asks about B's slots only a grace late). At 10:00:05.2
    the operator disables the entry (``Manager.update("rt1", enabled=False)``; or removes
    it). A reads the change at its next refresh; B's record goes stale and A releases B's
    parked chains.

    Expected: A asks about 10:00:05, gets ``pending``, and takes the claim over after the
    lease (published once), as it does when the entry is paused or rescheduled instead, or
    left alone (checked: those variants publish 10:00:05 at 10:00:15); or at least it is
    reported skipped. What happens: 10:00:05 stays B's pending claim for ever (``state: claimed``,
    ``runs: 1``): never published, no ``entry_skipped``, no history item, no log line.

    Where: scheduler.py ``Scheduler._work_for``: the released chain item (``retry`` False) of
    a disabled (or removed) entry returns ``None`` ("removed or disabled since it was
    queued"); only ``retry and takeover`` items follow the entry by name (round 56's fix). A
    non-owner has no takeover retry for an owner's claim it never asked about, so the dead
    owner's unsent claims of a disabled or removed entry are asked about by nobody. Suggested
    fix: when a parked or deferred chain of a disabled/removed entry is released (or dropped),
    ask Redis once, takeover-only, about the entry's slots after what the owner's record was
    trusted for up to the change (or read the entry's pending hash and queue a takeover retry
    for each unsent claim), as the start-up read does for unsent claims.
    """
    name = "rt1"
    assert owner_of(name, ["replica-a", "replica-b"]) == "replica-b"
    conf = {"fork_scheduler_owner_grace": 1}
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        manager = Manager(make_app(server.url, {}, **conf), clock=clock)
        manager.add(name, TASK, "every 5 seconds")
        a = Beat(make_app(server.url, {}, **conf), clock, "replica-a")
        down = BrokerDownOnce()
        b = Beat(make_app(server.url, {}, **conf), clock, "replica-b", down)
        beats.extend([a, b])
        a.scheduler.setup_schedule()
        b.scheduler.setup_schedule()
        tick_until(clock, [a, b], t(4.9), 0.1)
        assert a.scheduler.ownership.other_owner(name) == "replica-b"
        down.down = True
        clock.set(t(5.02))
        b.scheduler.tick()  # B wins 10:00:05; its broker is away: asked again a second later
        assert slots_of(b, name) == []
        # B dies here (SIGKILL): it never ticks again.
        clock.set(t(5.2))
        # (a pause or a new schedule instead: A takes 10:00:05 over at 10:00:15)
        if change == "disable":
            manager.update(name, enabled=False)
        else:
            manager.remove(name)
        tick_until(clock, [a], t(40), 0.1)
        client = redis.Redis.from_url(server.url)
        pending = client.hgetall(KEYS.pending(name))
        state = client.hgetall(KEYS.state(name))

    published = slots_of(a, name) + slots_of(b, name)
    reported = [reason for n, slot, reason in skipped if n == name and slot == t(5)]
    assert t(5) in published or reported, (
        f"10:00:05 was won by B (dead), then neither published nor reported; still pending: "
        f"{pending}, state: {state}"
    )


def test_a_starting_replica_does_not_take_over_an_unsent_claim_of_an_entry_disabled_since(
    beats: list[Any], tmp_path: Path, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md promise 4, "No silent loss": "If the replica that won a
    slot dies before it starts publishing it, another replica publishes it after the claim
    lease, with the same task id — also when every replica that saw the claim pending died
    too: a starting replica reads every unsent claim of every entry and asks for each"; the
    runtime row: "a slot claimed before the entry was removed or disabled is still published
    (its claim counted the run), also when ... another replica takes it over"; the "Unsent
    claim at start-up" check.

    Sequence (one replica B; runtime entry ``rt`` every 5 s): at 10:00:05.02 B wins 10:00:05
    (``runs`` 1) but its broker cannot be reached for a moment; the claim stays B's,
    unfenced, and B dies. At 10:00:05.5 the operator disables ``rt``. At 10:00:08 replica C
    starts (the lease of 10 s runs out at 10:00:15) and runs until 10:00:40.

    Expected: C reads B's unsent claim at start-up and takes it over after the lease (without
    the disable, C publishes 10:00:05 at 10:00:15), or reports it.
    What happens: 10:00:05 stays B's pending claim for ever; nothing published or reported.

    Where: scheduler.py ``Scheduler._add_read_late`` queues an entry read at start-up for the
    start-up catch-up (``_queue_read_late`` -> ``StartupCatchUp.add``, which reads the
    entry's unsent claims) only ``if ... entry.enabled``: a disabled entry's mark and pending
    claims are never read, so its unsent claims are not asked about. Suggested fix: add
    disabled (runtime) entries to the start-up read too, asking only about their unsent
    claims (takeover-only), not their missed slots.
    """
    name = "rt"
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        manager = Manager(make_app(server.url, {}), clock=clock)
        manager.add(name, TASK, "every 5 seconds")
        down = BrokerDownOnce()
        b = Beat(make_app(server.url, {}), clock, "replica-b", down)
        beats.append(b)
        b.scheduler.setup_schedule()
        tick_until(clock, [b], t(4.9), 0.25)
        down.down = True
        clock.set(t(5.02))
        b.scheduler.tick()  # B wins 10:00:05; its broker is away: asked again a second later
        assert slots_of(b, name) == []
        # B dies here (SIGKILL): it never ticks again.
        clock.set(t(5.5))
        manager.update(name, enabled=False)  # (without it, C publishes 10:00:05 at 10:00:15)
        clock.set(t(8))
        c = Beat(make_app(server.url, {}), clock, "replica-c")
        beats.append(c)
        c.scheduler.setup_schedule()
        tick_until(clock, [c], t(40), 0.25)
        client = redis.Redis.from_url(server.url)
        pending = client.hgetall(KEYS.pending(name))

    published = slots_of(b, name) + slots_of(c, name)
    reported = [reason for n, slot, reason in skipped if n == name and slot == t(5)]
    assert t(5) in published or reported, (
        f"10:00:05 was won by B (dead), then neither published nor reported; still pending: "
        f"{pending}"
    )


def test_a_held_run_whose_publish_fails_across_a_disable_is_put_back_and_sent_after_re_enable(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Promise: docs/guarantees.md, runtime row: "Slots of the earlier definition already due
    at that instant still fire (unless the change disables the entry or removes it) ... A
    change that disables a runtime entry deletes its held ``buffer_one``/``buffer_all`` runs in
    the same write, as a removal does: a run that ends after it hands nothing over"; docs/
    schedules.md, ``enabled``: "``False`` keeps the entry defined but never fires it";
    docs/redis-layout.md, ``disabled``: "so none is held back after the disable deleted its
    held runs".

    Sequence (one replica, one worker; runtime entry ``rt`` every 5 s, ``overlap`` =
    ``buffer_all``): the run of 10:00:00 starts; 10:00:05 is queued behind it. At 10:00:06.5
    the run ends: ``RELEASE`` hands the marker to 10:00:05 and the worker publishes it. While
    that publish is under way (a broker that answers slowly, then refuses) the operator
    disables ``rt``; the publish then fails (refused before anything left: ``failed``), and
    ``GIVE_BACK_HELD`` puts the message back at the head of the (now deleted) queue. The
    replica reads the disable; nothing of ``rt`` runs. At 10:00:20.5 the operator enables
    ``rt`` again.

    Expected: 10:00:05, due 1.5 s before the disable and held back then, is gone with the
    disable (never sent), as a run held at the disable is (round 56); only slots after the
    enable fire. What happens: the disable deleted an empty queue; the give-back then re-created
    it with 10:00:05 (``P{rt}:buffered`` exists after the disable); at the first claim after
    the enable (10:00:25, no run holds the marker) the claim script hands the queue's head over
    and the replica publishes 10:00:05, 20 s after the disable and 5 s after the re-enable.

    Where: backends/lua.py ``GIVE_BACK_HELD`` (``failed`` and ``unconfirmed``) pushes the
    message back (``LPUSH`` / ``SET NX``) whatever the entry's state says: it reads neither
    ``disabled`` nor ``removed`` / ``paused`` (``RELEASE`` checks ``paused`` and ``removed``
    before a hand-over, but a hand-over already under way is put back unconditionally).
    Suggested fix: in ``GIVE_BACK_HELD``, when the state says ``disabled`` (or ``removed``),
    drop the message instead and record it skipped (``disabled``), as ``RELEASE`` does for a
    paused entry.
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
            if calls[0] == 1:  # the disable lands while this publish is under way
                manager.update("rt", enabled=False)
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
        worker.end(first.task_id)  # hands 10:00:05 over; its publish fails across the disable
        held_after_disable = client.exists(KEYS.buffered("rt"))
        beat.run_until(t(20))  # the replica reads the disable: nothing of rt
        clock.set(t(20.5))
        manager.update("rt", enabled=True)
        beat.run_until(t(32))
        published = sorted(o.slot for o in sent + beat.publisher.occurrences if o.entry == "rt")

    late = [s.time().isoformat() for s in published if t(1) < s < t(20.5)]
    assert not late, (
        f"slots due before the disable published after the entry was enabled again: {late} "
        f"(held after the disable: {held_after_disable})"
    )
