"""Adversary round 56: runtime edits that disable an entry (``Manager.update(name,
enabled=False)``) meeting a claim in flight or a held run. Both found failing by round 56,
fixed: a takeover retry (this replica's own unfenced claim asked about again included) follows
a disabled entry as it follows a removed one (``Scheduler._work_for``), and a write that
disables a runtime entry deletes its held runs with it (``store.disables``, PUT_MANY).

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

#: The task of every entry.
TASK = "adv56.job"

#: ``make_app(url, beat_schedule, **conf)``: the app of this round (broker ``memory://``); a
#: failed Redis call is not retried.
make_app = partial(restart_helpers.make_app, "adv56", TASK, fork_scheduler_max_retries=0)


def slots_of(beat: Any, name: str = "rt") -> list[datetime]:
    return [o.slot for o in beat.publisher.occurrences if o.entry == name]


# -- 1. a won claim of an entry disabled before its publish is dropped, unreported ----------------


def test_a_won_claim_whose_entry_is_disabled_before_its_publish_is_lost_unreported(
    beats: list[Any], tmp_path: Path, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md promise 1 ("every slot is published; the exceptions ... each
    of them is **reported** (an ``entry_skipped`` signal with its reason, a log line, a history
    item)") and promise 4, "No silent loss"; the step "Prepare": "a broker that cannot be
    reached leaves the claims unfenced and the replica asks again a second later while the
    slots are within the catch-up grace, then gives them back (``broker_unavailable``)"; and
    the runtime row: "retries of a slot (pending, takeover) follow the entry by name" (a slot
    of a *removed* entry claimed before the removal is still taken over and published: seed
    8387, ``tests/test_finished_entry_takeover.py``).

    Sequence (one replica; runtime entry ``rt`` every 5 s): at 10:00:05.05 the replica wins
    10:00:05 (its run is counted), but the broker cannot be reached for a moment: the claim
    stays this replica's, unfenced, asked again a second later. At 10:00:05.5 the operator
    disables the entry (``Manager.update("rt", enabled=False)``). The replica reads the change
    at its next refresh, then its retry of 10:00:05 comes up.

    Expected: 10:00:05 is published (as it is when the entry is removed, paused or
    rescheduled instead: each of those publishes it at 10:00:06), or at least reported skipped
    and its claim closed. What happens: the retry is dropped because the entry is disabled;
    10:00:05 stays a pending claim of this replica for ever (``state: claimed``, ``runs: 1``):
    never published, no ``entry_skipped``, no history item, no log line. Two replicas fare no
    better: another replica's takeover retry of a dead replica's claim is dropped the same way.
    Where: scheduler.py ``Scheduler._work_for``: ``if entry is None or not entry.enabled:
    return None`` runs for retries (``item.retry``) too; only a *removed* entry's takeover
    retry goes on under ``item.entry``.
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        manager = Manager(make_app(server.url, {}), clock=clock)
        manager.add("rt", TASK, "every 5 seconds")
        down = BrokerDownOnce()
        beat = Beat(make_app(server.url, {}), clock, "replica-a", down)
        beats.append(beat)
        beat.scheduler.setup_schedule()
        tick_until(clock, [beat], t(4.9), 0.25)
        down.down = True
        clock.set(t(5.05))
        beat.scheduler.tick()  # wins 10:00:05; the broker is away: asked again a second later
        assert slots_of(beat) == []
        clock.set(t(5.5))
        manager.update("rt", enabled=False)
        tick_until(clock, [beat], t(30), 0.25)
        client = redis.Redis.from_url(server.url)
        pending = client.hgetall(KEYS.pending("rt"))
        history = client.lrange(KEYS.history("rt"), 0, -1)

    reported = [reason for name, slot, reason in skipped if name == "rt" and slot == t(5)]
    assert t(5) in slots_of(beat) or reported, (
        f"10:00:05 was won, then neither published nor reported; still pending: {pending}, "
        f"history: {history}"
    )


# -- 2. a held run of an entry disabled meanwhile is published after the disable -----------------


@pytest.mark.parametrize("overlap", ["buffer_one", "buffer_all"])
def test_a_held_run_of_an_entry_disabled_meanwhile_is_published_after_the_disable(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overlap: str,
) -> None:
    """Promise: docs/schedules.md, entry key ``enabled``: "``False`` keeps the entry defined but
    never fires it"; docs/guarantees.md, runtime row: "Slots of the earlier definition already
    due at that instant still fire (unless the change disables the entry or removes it)";
    docs/singleton.md, ``buffer_one``: "A held run of an entry paused meanwhile is dropped when
    the running one ends (recorded as ``skipped:paused``); removing a runtime entry deletes its
    held run at once" (``buffer_all``: "the rest is as for ``buffer_one``").

    Sequence (one replica, one worker; runtime entry ``rt`` every 5 s with ``overlap`` =
    ``buffer_one`` / ``buffer_all``): the run of 10:00:00 starts on the worker; the claim of
    10:00:05 finds it running and holds 10:00:05 back (``buffered``). At 10:00:06.5 the operator
    disables the entry (``Manager.update("rt", enabled=False)``); every replica reads it. At
    10:00:08 the run of 10:00:00 ends.

    Expected: nothing more of ``rt`` is sent (the held 10:00:05 dropped and reported, as a pause
    or a removal does). What happens: the worker's release hands the marker to the held run and
    publishes 10:00:05, a run of an entry that was disabled 1.5 s before. Where: the disable is
    a plain store write (store.py ``RuntimeStore.put``); nothing drops the held message
    ``P{rt}:buffered`` and backends/lua.py ``RELEASE`` checks the entry's ``paused`` and
    ``removed`` fields only, never whether the definition is disabled.
    """
    sent: list[Any] = []  # what the worker publishes (held runs go through Celery)
    monkeypatch.setattr(held_module.CeleryPublisher, "publish", lambda self, o: sent.append(o))
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-3))
        app = make_app(server.url, {})
        manager = Manager(app, clock=clock)
        manager.add("rt", TASK, "every 5 seconds", overlap=overlap)
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(1))
        [first] = [o for o in beat.publisher.occurrences if o.entry == "rt"]
        assert first.slot == t(0)
        assert worker.start(first.task_id, dict(first.headers))
        beat.run_until(t(6))  # 10:00:05 is held back behind the run of 10:00:00
        client = redis.Redis.from_url(server.url)
        assert client.exists(KEYS.buffered("rt"))
        clock.set(t(6.5))
        manager.update("rt", enabled=False)
        beat.run_until(t(8))  # the replica reads the change
        worker.end(first.task_id)  # the run of 10:00:00 ends

    after_disable = [o.slot.time().isoformat() for o in sent]
    assert after_disable == [], f"runs of the disabled entry published: {after_disable}"
