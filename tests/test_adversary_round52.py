"""Adversary round 52: round 51's fixes -- the start-up catch-up that leaves to nobody
(``unknown``) the slots due before Redis's start of an entry whose mark predates it
(``StartupCatchUp._check`` / ``_unknown_left_out``, ``RedisBackend.last_restart``), and the
worker heartbeat that watches Redis's ``run_id`` every 0.5 s while it holds a singleton or
capped run and takes a lost marker or place back (``WorkerHooks._beat_hearts``,
``_redis_restarted``, ``_renew``).

Each test's docstring names the promise (with its page), the sequence, what happens instead
and where. Claims are on a real, private ``redis-server`` that the test crashes and starts
again (empty, or from an RDB snapshot copied earlier); beat runs on the real clock (this host's
clock is Redis's); the worker's hooks are driven by hand, with their real heartbeat thread.

Found failing by round 52 (at bdf5c69) and fixed: just after a detected restart a run executing
takes its marker whoever holds it (a snapshot may bring back an ended run's), and every
heartbeat pass also records Redis's ``run_id``, so a restart right after a process's first run
started is seen.
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import restart_helpers
from hand_driven_helpers import HandDrivenWorker as Worker
from restart_helpers import (  # noqa: F401 - the fixtures beats, servers and workers
    RealClockBeat,
    beats_fixture,
    crash,
    run_beat_until,
    servers_fixture,
    start_server,
    workers_fixture,
)

from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import RedisServer

KEYS = Keys("scheduler:")

#: The task of every entry.
TASK = "adv52.job"


#: ``make_app(url, beat_schedule, *, broker="memory://", **conf)``: beat and worker of one app
#: (every test here gives the claims' Redis as its broker too).
make_app = partial(restart_helpers.make_app, "adv52", TASK)


# -- 1. an older snapshot brings back the marker of an ended run: the take-back waits a beat ------


def test_a_snapshot_restoring_an_ended_runs_marker_lets_a_slot_start_beside_the_run(
    servers: list[RedisServer], beats: list[Any], workers: list[Worker], tmp_path: Path
) -> None:
    """Promise: docs/singleton.md, "The lease and the heartbeat": "A run **executing** whose
    marker is gone while nobody else holds it -- Redis restarted without its data ... -- takes
    it back at the next heartbeat ... A worker process holding such a run also looks every
    0.5 s whether Redis restarted (its ``run_id``) and then renews at once ... so after a
    restart the marker is back before the slots after Redis's start can be won"; "Every policy
    but allow is a singleton: never two runs of the entry at once, across the cluster". The
    failure row "Redis loses data" (docs/guarantees.md) names Redis "restarted from an older
    snapshot (RDB)" and lists no overlap among its costs; the only overlap singleton.md admits
    is "a flush or a failover ... while every connection stayed up".

    Sequence (real clock; ``e`` every 1 s, ``singleton=True``; lease 9 s, so a heartbeat every
    3 s): the worker starts run R0 of the first slot; Redis's RDB save point falls while R0
    holds the marker (the snapshot holds R0's marker, expiring about 9 s later); R0 ends (its
    marker is freed) and the next slot's run R1 starts and keeps executing. About 5 s after
    R0's start Redis crashes and comes back from that snapshot.

    What happens: the worker sees the new ``run_id`` within 0.5 s and renews at once, but the
    marker is R0's (an ended run's, restored by the snapshot): HEARTBEAT neither renews nor
    takes it back (``if not held``), and the next try is a whole heartbeat later (a third of
    the lease; 20 s by default). R0's restored marker expires in between; the first slot after
    that is won, published and starts beside R1 (its start takes the free marker). Where:
    worker.py ``WorkerHooks._renew`` (a marker held by another task id is left alone, with no
    earlier retry: nothing watches its expiry) and ``_beat_hearts`` (``renew_at = now +
    interval`` after the failed take-back); backends/lua.py ``HEARTBEAT``.
    """
    server = start_server(servers)
    client = redis.Redis.from_url(server.url)
    client.flushall()
    entry = {"task": TASK, "schedule": timedelta(seconds=1), "singleton": True}
    app = make_app(server.url, {"e": entry}, broker=server.url, fork_scheduler_singleton_lease=9)
    beat = RealClockBeat(app)
    beats.append(beat)
    beat.scheduler.setup_schedule()
    worker = Worker(app, TASK)
    workers.append(worker)
    beat.run_until_published(1, within=5)
    [r0] = beat.publisher.occurrences
    assert worker.start(r0.task_id, dict(r0.headers))  # the heartbeat thread starts here
    t0 = time.monotonic()
    client.save()  # the save point: R0 holds the marker
    dump = Path(shutil.copy(server.workdir / "dump.rdb", tmp_path / "dump.rdb"))
    worker.end(r0.task_id)
    beat.run_until_published(2, within=5)
    r1 = beat.publisher.occurrences[1]
    assert worker.start(r1.task_id, dict(r1.headers))  # executing from now on
    run_beat_until(beat, t0 + 5.2)
    assert len(beat.publisher.occurrences) == 2  # the slots meanwhile are busy

    crash(server)
    again = start_server(servers, port=server.port, kept=dump)
    restored = redis.Redis.from_url(again.url).get(KEYS.running("e"))
    assert restored == r0.task_id.encode()  # the ended run's marker, back from the snapshot
    run_beat_until(beat, t0 + 14)

    later = [o for o in beat.publisher.occurrences if o.slot > r1.slot]
    # R1 never ended: any later run that executes overlaps it.
    overlapping = [o.slot for o in later if worker.start(o.task_id, dict(o.headers))]
    assert overlapping == [], (
        f"marker restored by the snapshot: {restored!r} (R0 {r0.task_id}); run of "
        f"{r1.slot.time()} still executing; started beside it: "
        f"{[s.time().isoformat() for s in overlapping]}"
    )


# -- 2. the first look records the run_id of a Redis that already restarted -----------------------


@pytest.mark.parametrize("policy", ["singleton", "cap"])
def test_a_restart_before_the_first_look_at_the_run_id_goes_unseen(
    servers: list[RedisServer], beats: list[Any], workers: list[Worker], policy: str
) -> None:
    """Promise: docs/singleton.md, "The lease and the heartbeat": "A worker process holding
    such a run also looks every 0.5 s whether Redis restarted (its ``run_id``) and then renews
    at once ... so after a restart the marker is back before the slots after Redis's start can
    be won (the claims refuse those of its first 1.5 s at least)"; "never two runs of the
    entry at once, across the cluster" (the cap likewise).

    Sequence (real clock; ``e`` every 1 s, ``singleton=True`` or allow under
    ``fork_scheduler_max_concurrent=1``; default lease 60 s): a worker process starts its first
    such run (its heartbeat ticks every 0.5 s from then; the first tick renews, as every 20 s);
    between that first tick and the next, Redis crashes and is back, empty, in about 50 ms (a
    supervisor's restart); the run goes on.

    What happens: ``_redis_run_id`` is only recorded at a look made while holding a run, and
    the first look of the process (``seen is None``) answers "not restarted": it records the
    *new* server's ``run_id`` as the baseline, so the restart is never seen. The marker (the
    place) stays lost until the next heartbeat, 20 s on; the first slot after Redis's start
    plus 1.5 s is won and starts beside the run. Where: worker.py
    ``WorkerHooks._redis_restarted`` (``return seen is not None and run_id != seen``; the
    baseline is not taken when the run's marker is taken) with ``_beat_hearts`` (the first
    iteration renews without looking; later ones skip the renewal unless a look says so).
    """
    server = start_server(servers)
    entry: dict[str, Any] = {"task": TASK, "schedule": timedelta(seconds=1)}
    conf: dict[str, Any] = {}
    if policy == "singleton":
        entry["singleton"] = True
    else:
        conf["fork_scheduler_max_concurrent"] = 1
    redis.Redis.from_url(server.url).flushall()
    app = make_app(server.url, {"e": entry}, broker=server.url, **conf)
    beat = RealClockBeat(app)
    beats.append(beat)
    beat.scheduler.setup_schedule()
    worker = Worker(app, TASK)
    workers.append(worker)
    beat.run_until_published(1, within=5)
    [first] = beat.publisher.occurrences
    assert worker.start(first.task_id, dict(first.headers))  # the heartbeat thread starts
    started = time.monotonic()
    time.sleep(max(started + 0.65 - time.monotonic(), 0))  # after its first tick (a renewal)
    crash(server)  # Redis crashes and is back, empty, before the tick that looks
    start_server(servers, port=server.port)
    assert time.monotonic() < started + 0.95, "the restart was too slow for this sequence"
    beat.run_until_published(2, within=6)

    later = [o for o in beat.publisher.occurrences if o.slot > first.slot]
    # The first run never ended: any later run that executes overlaps it.
    overlapping = [o.slot for o in later if worker.start(o.task_id, dict(o.headers))]
    assert overlapping == [], (
        f"run of {first.slot.time()} still executing; started beside it: "
        f"{[s.time().isoformat() for s in overlapping]}"
    )
