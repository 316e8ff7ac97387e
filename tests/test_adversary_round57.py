"""Adversary round 57: a disable meeting a claim made by a replica that has not read it (a run
held back after the disable is handed over later), a backfilled run skipped at its start
(``max_runs`` exceeded; simulator seed 30040), a backfill of a disabled entry, and a host
clock step while Redis was down (a jittered slot published early; simulator seed 30477 with
``--shared-broker``). All found failing by round 57, fixed: the state of a disabled entry says
so and the claim script refuses it new claims (``disabled``); the worker records a backfilled
run's skip as uncounted (``Run.backfilled``); a backfill skips a disabled entry unless forced
(``skipped:disabled``); a step Redis cannot measure is taken back from the offset
(``RedisClock.watch_for_steps``).

Each test's docstring names the promise (with its page), the sequence, what was expected and
what happened, and where. Claims are on a real ``redis-server`` whose clock is the replicas'
fake clock (``virtual_time_redis``), so leases and Redis ``TIME`` follow the test's clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import restart_helpers
from hand_driven_helpers import HandDrivenWorker
from restart_helpers import (  # noqa: F401 - the fixtures beats and workers
    BASE,
    KEYS,
    beat_with_worker,
    beats_fixture,
    t,
    workers_fixture,
)
from test_adversary_round53 import tick_until
from virtual_time_redis import virtual_redis

from celery_fork_scheduler import Manager, Scheduler
from celery_fork_scheduler import held as held_module
from celery_fork_scheduler import scheduler as scheduler_module
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.redis_clock import RedisClock
from celery_fork_scheduler.testing import RecordingPublisher

#: The task of every entry.
TASK = "adv57.job"

#: ``make_app(url, beat_schedule, **conf)``: the app of this round (broker ``memory://``); a
#: failed Redis call is not retried.
make_app = partial(restart_helpers.make_app, "adv57", TASK, fork_scheduler_max_retries=0)


# -- 1. a claim made after the disable, by a replica that has not read it, holds a run back ------


@pytest.mark.parametrize("overlap", ["buffer_one", "buffer_all"])
def test_a_run_held_back_after_the_disable_by_a_replica_that_has_not_read_it_is_handed_over(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overlap: str,
) -> None:
    """Promise: docs/guarantees.md, runtime row: "A change that disables a runtime entry
    deletes its held ``buffer_one``/``buffer_all`` runs in the same write, as a removal does: a
    run that ends after it hands nothing over"; docs/singleton.md, "Pause, disable and
    removal"; docs/schedules.md, entry key ``enabled``: "``False`` keeps the entry defined but
    never fires it".

    Sequence (one replica, one worker; runtime entry ``rt`` every 5 s, ``overlap`` =
    ``buffer_one`` / ``buffer_all``; the replica reads runtime changes at x.25 s, every
    second): the run of 10:00:00 starts on the worker and keeps its marker. At 10:00:05.02
    the operator disables the entry (``Manager.update("rt", enabled=False)``); nothing is held
    yet, so the write deletes nothing. At 10:00:05.1 the replica, which has not read the
    disable yet (it reads it at 10:00:05.25), claims 10:00:05 under the definition it read:
    the claim script finds the marker held and holds 10:00:05 back (``buffered``). The replica
    then reads the disable. At 10:00:08 (it could be an hour later) the run of 10:00:00 ends.

    Expected: the run that ends after the disable hands nothing over (as for a removal, whose
    ``removed`` field RELEASE checks, or a pause). What happens: the worker's release hands
    the marker to the run held after the disable and publishes 10:00:05, a run of an entry
    disabled 3 s before; its claim came from a replica that had not read the disable, and the
    hand-over comes whenever the running run ends, not within a refresh. Where: the disable
    deletes only what is held at the instant of the write (store.py ``RuntimeStore.put`` /
    ``put_many``, PUT_MANY ``KEYS[13...]``), but nothing in Redis says the entry is disabled:
    backends/lua.py ``CLAIM`` buffers a slot due before the change (its ``changed`` fence
    refuses only slots after it) and ``RELEASE`` checks ``removed`` and ``paused``, never a
    disable. Suggested fix: the disabling write marks the state hash (say ``disabled`` with
    the change's version, cleared by the write that enables it), CLAIM refuses to hold a run
    back while it is set and RELEASE drops a held run (``skipped:disabled``) as it does for
    ``paused``/``removed``.
    """
    sent: list[Any] = []  # what the worker publishes (held runs go through Celery)
    monkeypatch.setattr(held_module.CeleryPublisher, "publish", lambda self, o: sent.append(o))
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-2.75))  # the replica reads runtime changes at x.25 s (every second)
        app = make_app(server.url, {})
        manager = Manager(app, clock=clock)
        manager.add("rt", TASK, "every 5 seconds", overlap=overlap)
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(1))
        [first] = [o for o in beat.publisher.occurrences if o.entry == "rt"]
        assert first.slot == t(0)
        assert worker.start(first.task_id, dict(first.headers))
        tick_until(clock, [beat], t(4.9), 0.25)  # last read of the runtime entries: 10:00:04.25
        client = redis.Redis.from_url(server.url)
        assert not client.exists(KEYS.buffered("rt"))
        clock.set(t(5.02))
        manager.update("rt", enabled=False)  # 10:00:05 is due; nothing is held yet
        clock.set(t(5.1))
        beat.scheduler.tick()  # the claim of 10:00:05, under the definition read at 04.25
        held_after_disable = bool(client.exists(KEYS.buffered("rt")))
        beat.run_until(t(8))  # the replica reads the disable at 10:00:05.25
        worker.end(first.task_id)  # the run of 10:00:00 ends, 3 s after the disable

    after_disable = [o.slot.time().isoformat() for o in sent]
    assert after_disable == [], (
        f"held after the disable: {held_after_disable}; runs of the disabled entry published "
        f"when the running one ended: {after_disable}"
    )


# -- 2. a backfilled run the worker skips gives back a run it never counted -----------------------


def test_a_backfilled_run_skipped_busy_at_its_start_gives_max_runs_a_run_back(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Promise: docs/guarantees.md promise 6 ("Pause, ``singleton``/``overlap``, ``max_runs``
    and the concurrency cap ... hold for all replicas together") and the ``max_runs`` row ("An
    entry uses up ``max_runs``: the next claim answers ``finished``"); docs/manager.md,
    Backfill, and docs/testing-the-scheduler.md (the simulator's rule ``finished``: "no more
    than ``max_runs`` runs ...; backfilled runs do not count (documented)"). Found by the
    simulator: ``scripts/simulate.py --seed 30040`` (``VIOLATION [finished]
    e04-celery_timedelta published 6 runs, max_runs is 5``) - a product bug, not a checker gap.

    Sequence (one replica, one worker, default 60 s singleton lease; runtime entry ``rt`` every
    5 s, ``overlap="skip"``, ``max_runs=2``): 10:00:00 is won (run 1 of 2) and starts;
    10:00:05 is skipped ``busy``; the run ends. At 10:00:06.5 the operator backfills
    10:00:05 (never published): BACKFILL_CLAIM takes the marker for it and it is published
    with ``fork_scheduler_backfill`` (not counted: BACKFILL_CLAIM never touches ``runs``). The
    workers are busy elsewhere for a minute: the backfilled run's marker expires, 10:01:10 is
    won (run 2 of 2) and published. A worker then takes the backlog: the backfilled 10:00:05
    starts first, finds the marker held by 10:01:10 and is not run (``busy``); 10:01:10 runs.

    Expected: two scheduled runs at most (10:00:00 and 10:01:10), then ``finished``. What
    happens: the skipped backfilled run is recorded with RECORD_SKIP "counted" (a scheduled
    run: given back), so ``runs`` drops from 2 to 1 although the backfill never counted it,
    and 10:01:15 is won as a third scheduled run (``runs`` 2 again). Where: worker.py
    ``WorkerHooks.on_postrun`` -> ``_record_skip(run, ..., counted=not run.retried)``; a
    backfilled run is told apart by no header the worker reads (``_run_of`` reads
    ``fork_scheduler_manual``, not ``fork_scheduler_backfill``), and backends/lua.py
    ``RECORD_SKIP`` / ``_GIVE_BACK_RUN`` decrement ``runs``. Suggested fix: read the backfill
    header into ``Run`` and record its skip uncounted (``"0"``), as for a manual run.
    """
    backfilled: list[Any] = []  # what the backfill publishes (through Celery)
    monkeypatch.setattr(
        held_module.CeleryPublisher, "publish", lambda self, o: backfilled.append(o)
    )
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-3))
        app = make_app(server.url, {})
        manager = Manager(app, clock=clock)
        manager.add("rt", TASK, "every 5 seconds", overlap="skip", max_runs=2)
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(1))
        [first] = [o for o in beat.publisher.occurrences if o.entry == "rt"]
        assert worker.start(first.task_id, dict(first.headers))
        beat.run_until(t(6))  # 10:00:05 is skipped busy
        worker.end(first.task_id)  # run 1 of 2 ends
        clock.set(t(6.5))
        [result] = manager.backfill("rt", t(5), t(5), sleep=lambda _: None)
        assert result.outcome == "sent", result
        [late] = backfilled
        # The workers are busy elsewhere; the backfilled run's marker expires (its 60 s lease)
        # and 10:01:10 is won (run 2 of 2) and published.
        beat.run_until(t(71))
        second = [o for o in beat.publisher.occurrences if o.entry == "rt" and o.slot == t(70)]
        assert second, "10:01:10 published"
        # A worker picks the backlog up: the backfilled 10:00:05 first, skipped (busy) ...
        assert not worker.start(late.task_id, dict(late.headers))
        worker.end(late.task_id)
        # ... then 10:01:10, which runs.
        assert worker.start(second[0].task_id, dict(second[0].headers))
        worker.end(second[0].task_id)
        beat.run_until(t(91))
        client = redis.Redis.from_url(server.url)
        runs = client.hget(KEYS.state("rt"), "runs")

    scheduled = [o.slot.time().isoformat() for o in beat.publisher.occurrences if o.entry == "rt"]
    assert len(scheduled) <= 2, (
        f"max_runs=2, scheduled runs published: {scheduled} (runs counter {runs!r})"
    )


# -- 3. a backfill of a disabled entry publishes its runs -----------------------------------------


def test_a_backfill_of_a_disabled_entry_publishes_its_runs(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Promise: docs/schedules.md, entry key ``enabled``: "``False`` keeps the entry defined
    but never fires it"; docs/manager.md, trigger: "a disabled entry is **not** run either
    ... unless ``force=True``" (commit 5bad463: "enabled=False never fires the entry");
    docs/manager.md, Backfill: ``skipped:paused`` "the entry is paused; ``force=True`` sends
    it", and ``skipped:removed`` (a change while the backfill runs stops it).

    Sequence (one replica, one worker; runtime entry ``rt`` every 5 s, ``overlap="skip"``):
    10:00:00 runs; 10:00:05 is skipped ``busy``. At 10:00:06.5 the operator disables the
    entry; ``Manager.trigger("rt")`` is refused (``skipped="disabled"``). At 10:00:07
    ``Manager.backfill("rt", 10:00:05, 10:00:05)`` (no ``force``).

    Expected: nothing of the disabled entry is published without ``force`` (as a paused
    entry's backfill answers ``skipped:paused``, and a backfill that meets the disable while it
    runs stops with ``skipped:removed``). What happens: 10:00:05 is claimed and published
    (``sent``), a run of an entry that is disabled. Where: manager.py ``Manager.backfill``
    never looks at ``entry.enabled`` (``trigger`` does since 5bad463), and backends/lua.py
    ``BACKFILL_CLAIM`` checks only ``paused``, ``removed`` and a later ``defined`` version.
    Suggested fix: refuse a disabled entry's slots in ``Manager.backfill`` (``skipped:disabled``
    unless ``force``), as ``trigger`` does.
    """
    backfilled: list[Any] = []  # what the backfill publishes (through Celery)
    monkeypatch.setattr(
        held_module.CeleryPublisher, "publish", lambda self, o: backfilled.append(o)
    )
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-3))
        app = make_app(server.url, {})
        manager = Manager(app, clock=clock)
        manager.add("rt", TASK, "every 5 seconds", overlap="skip")
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(1))
        [first] = [o for o in beat.publisher.occurrences if o.entry == "rt"]
        assert worker.start(first.task_id, dict(first.headers))
        beat.run_until(t(6))  # 10:00:05 is skipped busy
        worker.end(first.task_id)
        clock.set(t(6.5))
        manager.update("rt", enabled=False)
        assert manager.trigger("rt").skipped == "disabled"  # a trigger is refused
        clock.set(t(7))
        results = manager.backfill("rt", t(5), t(5), sleep=lambda _: None)

    sent = [(r.slot.time().isoformat(), r.outcome) for r in results if r.outcome == "sent"]
    assert not backfilled and not sent, f"runs of the disabled entry backfilled: {sent}"


# -- 4. a host clock that steps while Redis is away sends a jittered slot early --------------------


class FollowingClock(RedisClock):
    """The replica's measure of Redis's clock as beat makes it in production (an injected clock
    normally turns measuring off): at start-up, every refresh and after a step of the host."""

    def __init__(self, *args: Any, follow: bool, **kwargs: Any) -> None:
        super().__init__(*args, follow=True, **kwargs)


def test_a_host_clock_step_during_a_redis_outage_publishes_a_jittered_slot_long_before_its_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: docs/guarantees.md promise 2, "Never early": "An entry with jitter is not
    claimed nor published before its slot plus the slot's offset (on that same clock)";
    docs/schedules.md, Jitter, "Not before": "That measure may be off by as much as the
    tolerance a slot itself gets (0.5 s, after a failover or a clock step), so a jittered slot
    may leave up to 0.5 s before its instant, never more"; the failure row "A replica's clock
    steps": "No early, late or duplicate fire". Found by the simulator:
    ``scripts/simulate.py --shared-broker --seed 30477`` (``VIOLATION [jitter_early]
    e05-interval slot 03:39:24.14 published at +727.544s, before its jittered instant
    +728.147s``: r1.1's clock stepped +3.757 s while Redis was down, and its first tick after
    Redis came back claimed the slot) - a product bug, not a checker gap.

    Sequence (one replica, default settings, measuring Redis's clock as beat does; static
    entry ``j`` every 60 s with ``jitter`` 50 s: 10:02:00 is published at 10:02:29.995): the
    replica publishes 10:00 and 10:01 on time. Redis crashes at 10:02:03.5 (it comes back
    from its snapshot of that instant). At 10:02:03.9 the host's clock steps +25.5 s. The tick
    at 10:02:04 sees the step and measures Redis ``TIME`` again: Redis is away, the measure
    fails and the replica keeps its old offset (its refresh, in the same tick, fails too; the
    next is a second later). Redis is back at 10:02:04.2. At 10:02:04.6 (Redis's clock) the
    replica's clock says 10:02:30.1: 10:02:00 is due to it.

    Expected: 10:02:00 is not claimed nor published before 10:02:29.495 (its instant minus
    the 0.5 s tolerance) by Redis's clock. What happens: the claim script compares only the
    nominal slot 10:02:00 with Redis ``TIME`` (10:02:04.6) and wins it: published at
    10:02:04.6, 25.4 s before its instant (a step of minutes with ``jitter="5 minutes"`` sends
    an @hourly entry minutes early). Where: redis_clock.py ``RedisClock.watch_for_steps``
    measures once after a step and forgets the step when that measure fails (Redis away);
    the next measure waits for the refresh interval, and the claims of the ticks in between
    run on the stale offset; backends/lua.py ``_CLAIM_BODY`` checks ``slot > now +
    tolerance`` on the nominal slot although it is given the offset (``ARGV[19]``, used only
    by the restart rule). Suggested fix: answer ``early`` when ``slot + ARGV[19]`` is beyond
    ``now + tolerance`` (and make ``_admit``'s retry wait ``retry_after`` without adding the
    offset again), and/or keep a failed step measure pending until one succeeds, before any
    claim.
    """
    monkeypatch.setattr(scheduler_module, "RedisClock", FollowingClock)
    step = [0.0]
    schedule = {"j": {"task": TASK, "schedule": timedelta(seconds=60), "jitter": 50}}
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock  # Redis's clock (TIME, expiries, its start)

        def host() -> datetime:
            return clock() + timedelta(seconds=step[0])

        clock.set(t(-3))
        app = make_app(server.url, schedule)
        backend = RedisBackend.from_url(server.url, read_settings(app.conf))
        publisher = RecordingPublisher()
        replica = Scheduler(
            app,
            clock=host,
            backend=backend,
            publisher=publisher,
            monotonic=lambda: clock.now.timestamp(),  # the host's monotonic clock: no step
            exit_on_config_error=False,
        )
        try:
            replica.setup_schedule()
            tick_until(clock, [_Ticking(replica)], t(123.5), 0.25)
            assert {o.slot for o in publisher.occurrences} == {t(0), t(60)}  # on time
            server.save("snapshot.rdb")
            server.crash()
            clock.set(t(123.9))
            step[0] = 25.5  # the host's clock steps while Redis is away
            clock.set(t(124.0))
            replica.tick()  # the step is seen; measuring Redis TIME fails
            clock.set(t(124.2))
            server.start_from("snapshot.rdb")
            clock.set(t(124.6))
            replica.tick()
            sent_at = clock()
            early = [o.slot for o in publisher.occurrences if o.slot == t(120)]
        finally:
            replica.close()

    instant = t(120) + timedelta(seconds=29.994888)
    assert not early, (
        f"10:02:00 (publish instant {instant.time()}) published at {sent_at.time()} by Redis's "
        f"clock, {(instant - sent_at).total_seconds():.1f} s early"
    )


class _Ticking:
    """A replica as ``tick_until`` drives it (``.scheduler.tick()``)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
