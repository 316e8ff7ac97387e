"""Adversary round 51: the fixes of rounds 49 and 50 -- the start-up catch-up that leaves the
slots due before Redis's start to nobody (``unknown``) when an entry's mark predates that start
(``StartupCatchUp._check`` / ``_unknown_left_out`` with ``RedisBackend.last_restart``), the
heartbeat that takes a lost marker back, ``StoredStateError`` and the CLI errors of one entry's
key of the wrong type, and the URL scrubber.

Each test's docstring names the promise (with its page), the sequence, what happens instead
and where. All found failing by round 51 and fixed: the unsent claims a starting replica would
take over follow the same rule, persistence is no longer trusted (a crash's instant is
unknown), and a worker holding a run watches Redis's ``run_id``. Every test failed on the code
of this round (b1f0217): 1 (an unsent claim the older
snapshot holds is taken over and published again), 2 (with AOF, the 2 s refused are counted
back from Redis's start, not from the crash), 3 (``durable`` is read from ``aof_enabled`` now,
after a restart from an RDB snapshot), 4 (a quick Redis restart between two heartbeats of the
default lease: the next slot starts beside the executing run). Claims are on a real Redis: a
private ``redis-server`` where the test crashes it and starts it again from a snapshot (RDB)
or an append-only file copied earlier; the replicas run on fake clocks kept in step with
Redis ``TIME`` wherever Redis's start time matters (the package assumes replicas follow
Redis's clock).
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import restart_helpers
from hand_driven_helpers import HandDrivenWorker as Worker
from hand_driven_helpers import RecordingBeat as Beat
from restart_helpers import (  # noqa: F401 - the fixtures beats and servers
    RealClockBeat,
    beats_fixture,
    crash,
    servers_fixture,
    start_server,
)

from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher, RedisServer

KEYS = Keys("scheduler:")
#: The task of every entry.
TASK = "adv51.job"


#: ``make_app(url, beat_schedule, *, broker="memory://", **conf)``: beat and worker of one app.
make_app = partial(restart_helpers.make_app, "adv51", TASK)


def timeline(seconds_ago: float) -> tuple[datetime, Any]:
    """A whole second ``seconds_ago`` before Redis ``TIME`` (the host's clock, which Redis's
    is), an even one (an ``every 2 s`` entry's slots fall on even seconds), and ``t(s)``: that
    second plus ``s`` seconds."""
    now = datetime.now(timezone.utc)
    base = now.replace(microsecond=0) - timedelta(seconds=seconds_ago)
    base -= timedelta(seconds=base.second % 2)
    return base, lambda s: base + timedelta(seconds=s)


class SnapshotBeforeTheFence(RecordingPublisher):
    """Records what it publishes; when ``snapshot`` is set, Redis saves a snapshot (an RDB save
    point falls there) just before the next batch is fenced, i.e. after its claims were won and
    before they were fenced and recorded sent."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.client = client
        self.snapshot = False

    def prepare(self) -> None:
        if self.snapshot:
            self.snapshot = False
            self.client.save()


# -- 1. an unsent claim in the older snapshot is taken over and published again -------------------


def test_an_unsent_claim_in_an_older_snapshot_is_taken_over_and_published_again(
    servers: list[RedisServer],
    beats: list[Any],
    tmp_path: Path,
    skipped: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/guarantees.md, failure row "Redis loses data": "No duplicates"; since
    round 49 (fcdd38a) the row says "Redis restarted from an older snapshot (RDB) keeps marks
    older than what was published, and after a whole-cluster restart no replica remembers the
    later ones: so a starting replica does not catch up a slot due before Redis's start ... of
    an entry whose mark predates that start; it reports it skipped ``unknown``". Promise 1:
    each slot published at most once.

    Sequence (one node holds Redis, RDB only, and the only beat A; claim lease 1 s): A
    publishes ``e`` (every 2 s) from 10:00:02. Redis's save point falls between A's claim of
    10:00:06 and its fence (the snapshot holds 10:00:06 as the mark, state ``claimed``, still
    pending); A fences, publishes and records 10:00:06, then 10:00:08. The node crashes at
    10:00:08.5; Redis comes back from that snapshot and replica B starts right after.

    What happens: B's start-up catch-up reports 10:00:08 skipped ``unknown`` as promised, but
    the snapshot's mark 10:00:06 is an *unsent* claim: B asks for it in takeover mode (a
    recent unsent claim: "a claim a replica just died with"), takes it over when its lease is
    out and publishes 10:00:06 a second time. The fix filters only ``missed``; the unsent
    claims (``mark.slot`` when not ``sent``, and ``mark.unsent``) of an entry whose mark
    predates Redis's start go to ``_unsent_to_ask`` unchecked. Where: startup_catchup.py
    ``StartupCatchUp._check`` (``_unknown_left_out`` applied to ``missed`` only, then
    ``asks = self._unsent_to_ask(...)`` pushed with ``takeover=True``).
    """
    server = start_server(servers)
    client = redis.Redis.from_url(server.url)
    client.flushall()  # (a Redis whose losses are bounded by now: A's first claim is won)
    _, t = timeline(9)
    schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=2)}}
    conf = {"fork_scheduler_claim_lease": 1}
    publisher = SnapshotBeforeTheFence(client)
    a = Beat(make_app(server.url, schedule, **conf), FakeClock(t(0.3)), "replica-a", publisher)
    beats.append(a)
    a.scheduler.setup_schedule()
    a.run_until(t(5))
    publisher.snapshot = True
    a.run_until(t(8.5))
    assert not publisher.snapshot  # the save point fell between a claim and its fence
    published_by_a = {o.slot for o in a.publisher.occurrences}
    dump = Path(shutil.copy(server.workdir / "dump.rdb", tmp_path / "dump.rdb"))

    crash(server)  # the node goes down: A with it, never ticked again
    again = start_server(servers, port=server.port, kept=dump)
    client = redis.Redis.from_url(again.url)
    state = client.hgetall(KEYS.state("e"))
    snapshot_mark = datetime.fromtimestamp(int(state[b"hwm"]) / 1e6, timezone.utc)
    assert state[b"state"] == b"claimed", state  # won, not yet fenced nor recorded sent
    assert snapshot_mark in published_by_a and snapshot_mark < max(published_by_a)

    started = datetime.now(timezone.utc)
    b = Beat(make_app(again.url, schedule, **conf), FakeClock(started), "replica-b")
    beats.append(b)
    b.scheduler.setup_schedule()
    b.run_until(started + timedelta(seconds=4))
    time.sleep(1.2)  # A's claim lease (Redis TIME) is out: B asks again
    b.run_until(started + timedelta(seconds=8))
    published_by_b = {o.slot for o in b.publisher.occurrences}

    assert any(why == "unknown" for _, _, why in skipped)  # the fix applies to missed slots
    twice = sorted(published_by_a & published_by_b)
    assert twice == [], f"published by A and again by B: {[s.time().isoformat() for s in twice]}"


# -- 2. with an append-only file: what a host crash loses is before the crash, not the start -----


def test_an_aof_redis_back_seconds_after_a_host_crash_has_its_lost_slots_published_again(
    servers: list[RedisServer],
    beats: list[Any],
    tmp_path: Path,
    skipped: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/guarantees.md, failure row "Redis loses data": "No duplicates", and "With
    an append-only file (``appendonly yes``, which this replica reads from ``INFO
    persistence``) only the slots of the last 2 s before the start are so refused" -- the row's
    advice is "Use AOF ... Turn on persistence (AOF) for the claim Redis". ``AOF_LOSS``'s own
    comment: "What Redis with an append-only file may lose in a crash (``appendfsync
    everysec``: the last second, written late)".

    Sequence (one node holds Redis, ``appendonly yes``, ``appendfsync everysec``, and the only
    beat A): A publishes ``e`` (every 2 s) from 10:00:02. The node loses power at 10:00:08.5:
    the append-only file keeps what was fsynced up to 10:00:07 (mark 10:00:06, sent) and loses
    the last 1.5 s -- the claim and the ``sent`` record of 10:00:08, which A had published.
    The host reboots and Redis starts again from its append-only file about 3 s after the
    crash; replica B starts right after (10:00:08 is still within the catch-up grace).

    What happens: what everysec loses is the last second(s) before the *crash*, but
    ``_unknown_left_out`` refuses the slots of the 2 s before Redis's *start* (read from its
    uptime). A crashed host does not start Redis again in the same instant (a reboot, a
    supervisor's back-off, a large file to load: ``uptime_in_seconds`` counts from the
    process's start), so the window misses the lost slot: B reads the mark 10:00:06,
    catches up 10:00:08 (a recent missed slot) and publishes it a second time. Where:
    startup_catchup.py ``StartupCatchUp._unknown_left_out`` (``earliest = restart.at -
    AOF_LOSS`` when ``restart.durable``), with backends/redis.py ``RedisBackend.last_restart``
    (the start, not the crash, is all it can read).
    """
    aof = ["--appendonly", "yes", "--appendfsync", "everysec"]
    server = start_server(servers, extra_args=aof)
    client = redis.Redis.from_url(server.url)
    client.flushall()  # (a Redis whose losses are bounded by now: A's first claim is won)
    _, t = timeline(10)
    schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=2)}}
    a = Beat(make_app(server.url, schedule), FakeClock(t(0.3)), "replica-a")
    beats.append(a)
    a.scheduler.setup_schedule()
    a.run_until(t(6.5))
    # What the disk holds at the power cut: the file as fsynced up to here.
    synced = Path(shutil.copytree(server.workdir / "appendonlydir", tmp_path / "appendonlydir"))
    a.run_until(t(8.5))
    published_by_a = {o.slot for o in a.publisher.occurrences}
    assert {t(6), t(8)} <= published_by_a

    crash(server)  # the power cut: A dies with the node
    time.sleep(max((t(11.5) - datetime.now(timezone.utc)).total_seconds(), 0))  # the reboot
    again = start_server(servers, port=server.port, kept=synced, extra_args=aof)
    client = redis.Redis.from_url(again.url)
    assert client.info("persistence")["aof_enabled"] == 1
    state = client.hgetall(KEYS.state("e"))
    assert int(state[b"hwm"]) == int(t(6).timestamp() * 1e6), state  # 10:00:08 was lost

    started = datetime.now(timezone.utc)
    b = Beat(make_app(again.url, schedule), FakeClock(started), "replica-b")
    beats.append(b)
    b.scheduler.setup_schedule()
    b.run_until(started + timedelta(seconds=4))
    published_by_b = {o.slot for o in b.publisher.occurrences}

    twice = sorted(published_by_a & published_by_b)
    assert twice == [], f"published by A and again by B: {[s.time().isoformat() for s in twice]}"


# -- 3. "durable" is read now, not for what Redis loaded at its start ----------------------------


def test_aof_turned_on_after_a_restart_from_an_older_snapshot_lets_its_slots_be_published_again(
    servers: list[RedisServer],
    beats: list[Any],
    tmp_path: Path,
    skipped: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/guarantees.md, failure row "Redis loses data": "No duplicates"; "Redis
    restarted from an older snapshot (RDB) keeps marks older than what was published ... so a
    starting replica does not catch up a slot due before Redis's start ... of an entry whose
    mark predates that start; it reports it skipped ``unknown``. With an append-only file
    (``appendonly yes``, which this replica reads from ``INFO persistence``) only the slots of
    the last 2 s before the start are so refused." The same row's advice: "Use AOF ... Turn on
    persistence (AOF) for the claim Redis".

    Sequence (one node holds Redis, RDB only, and the only beat A): A publishes ``e`` (every
    2 s) from 10:00:02; Redis's save point falls at 10:00:06.5 (mark 10:00:06); A publishes
    10:00:08 and 10:00:10; the node crashes at 10:00:10.5 and Redis comes back from that
    snapshot. Before the beats come back, the operator does what the page advises and Redis's
    documentation describes for a running server: ``CONFIG SET appendonly yes``. Replica B
    starts.

    What happens: without the ``CONFIG SET``, B reports 10:00:08 and 10:00:10 skipped
    ``unknown`` (the fix). With it, ``INFO persistence`` says ``aof_enabled:1``, so
    ``last_restart`` answers ``durable=True`` and only the 2 s before the start are refused,
    though what Redis loaded at that start was the older snapshot: B catches up 10:00:08 (only
    10:00:10, within those 2 s, is reported ``unknown``) and publishes it a second time.
    Where: backends/redis.py ``RedisBackend.last_restart`` (``durable`` from ``aof_enabled``
    as of now, not from how the data in memory was loaded), used by startup_catchup.py
    ``_unknown_left_out``.
    """
    server = start_server(servers)
    client = redis.Redis.from_url(server.url)
    client.flushall()  # (a Redis whose losses are bounded by now: A's first claim is won)
    _, t = timeline(11)
    schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=2)}}
    a = Beat(make_app(server.url, schedule), FakeClock(t(0.3)), "replica-a")
    beats.append(a)
    a.scheduler.setup_schedule()
    a.run_until(t(6.5))
    client.save()  # the save point
    dump = Path(shutil.copy(server.workdir / "dump.rdb", tmp_path / "dump.rdb"))
    a.run_until(t(10.5))
    published_by_a = {o.slot for o in a.publisher.occurrences}
    assert {t(6), t(8), t(10)} <= published_by_a

    crash(server)  # A dies with the node
    again = start_server(servers, port=server.port, kept=dump)
    client = redis.Redis.from_url(again.url)
    assert int(client.hget(KEYS.state("e"), "hwm") or 0) == int(t(6).timestamp() * 1e6)
    client.config_set("appendonly", "yes")  # persistence turned on, as the page advises
    deadline = time.monotonic() + 10
    while client.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
        time.sleep(0.05)

    started = datetime.now(timezone.utc)
    b = Beat(make_app(again.url, schedule), FakeClock(started), "replica-b")
    beats.append(b)
    b.scheduler.setup_schedule()
    b.run_until(started + timedelta(seconds=4))
    published_by_b = {o.slot for o in b.publisher.occurrences}

    twice = sorted(published_by_a & published_by_b)
    assert twice == [], f"published by A and again by B: {[s.time().isoformat() for s in twice]}"


# -- 4. a singleton run executing across a quick Redis restart, with the default lease ------------


@pytest.mark.parametrize("policy", ["singleton", "cap"])
def test_a_run_executing_across_a_quick_redis_restart_is_overlapped_with_the_default_lease(
    servers: list[RedisServer], beats: list[Any], policy: str
) -> None:
    """Promise: docs/singleton.md, "The lease and the heartbeat": "A run **executing** whose
    marker is gone while nobody else holds it -- Redis restarted without its data ... -- takes
    it back at the next heartbeat (its place under the cap too) ... After Redis could not be
    reached, the heartbeat asks every 0.2 s until it can, so after a restart the marker is back
    before the slots after Redis's start can be won (the claims refuse those of its first 1.5 s
    at least)". Only "a flush or a failover that lost the marker while every connection stayed
    up" is named as the case where "a slot won before the next heartbeat (up to a third of the
    lease) may still start beside the run". "Every policy but allow is a singleton: never two
    runs of the entry at once, across the cluster"; promise 6.

    Sequence (real clock; Redis and beat on one host; ``fork_scheduler_singleton_lease`` left
    at its default, 60 s: a heartbeat every 20 s): ``e`` every 1 s, ``singleton=True`` (or
    ``overlap`` allow under ``fork_scheduler_max_concurrent=1``). Beat publishes the first
    slot; a worker starts it and keeps executing it. The next slots are ``busy`` (``capped``).
    Redis crashes and is back (without its data) within a second -- a supervisor's restart;
    the run goes on.

    What happens: the worker learns nothing of the restart until its heartbeat next talks to
    Redis, up to 20 s later (the restart is quick: no heartbeat failed, so the 0.2 s retry never
    starts). The first slot after Redis's start plus 1.5 s finds no marker (a free place), is
    won, published and started beside the run: two runs at once. The round-49 test of this
    case used a 3 s lease (a heartbeat every second), which the fix covers. Where: worker.py
    ``WorkerHooks._beat_hearts`` (the take-back happens only at a heartbeat, every third of
    the lease; the 0.2 s cadence only after an error it saw).
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
    beat.run_until_published(1, within=5)
    [first] = beat.publisher.occurrences
    assert worker.start(first.task_id, dict(first.headers))  # executing from now on
    beat.run_for(1.5)
    assert len(beat.publisher.occurrences) == 1  # the next slots are busy (capped)

    crash(server)  # Redis crashes and comes back empty, at once
    start_server(servers, port=server.port)
    beat.run_until_published(2, within=6)

    later = [o for o in beat.publisher.occurrences if o.slot > first.slot]
    # The first run never ended: any later run that executes overlaps it.
    overlapping = [o.slot for o in later if worker.start(o.task_id, dict(o.headers))]
    assert overlapping == [], (
        f"run of {first.slot.time()} still executing; started beside it: "
        f"{[s.time().isoformat() for s in overlapping]}"
    )
