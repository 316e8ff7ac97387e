"""Adversary round 66: two ordinary events that meet.

Each test's docstring names the promise (with its page), the sequence of events, what was
expected and what happens. Claims are on a real ``redis-server`` (the session's, or one whose
clock is the replicas' fake clock: ``virtual_time_redis``); beat replicas run on a fake clock.
Every test here FAILED on the code it was written against (05978d3): found failing by round 66
and fixed with this file, except 1 (a documented limit, a strict xfail):

1. a ``one_off`` (``max_runs``) entry runs again after Redis restarts empty or from a snapshot
   taken before its run (the run count is not written back, only the mark);
2. lazy arguments of a buffering entry that raise when its won slot is asked about again
   (after a broker blip) keep the claim's run, marker and pending claim: a ``max_runs=1``
   entry finishes without a run;
3. a publish the broker refused (nothing sent) past the grace is recorded ``failed`` but
   keeps its ``max_runs`` run: a ``one_off`` entry never runs (given back when the same
   outage is seen at ``prepare``);
4. a held ``buffer_one`` run superseded by a claim whose reply was lost is never reported
   (no ``entry_skipped``, no log line);
5. a ``buffer_all`` run released by a claim whose reply was lost is never published nor
   reported;
6. a publish the broker refused during a Redis blip of the same second is never tried again
   (left fenced for ever, no history, no skip);
7. a released ``buffer_all`` run whose put-back's reply was lost is put back twice and
   published twice (``GIVE_BACK_HELD`` is not idempotent);
8. a released ``buffer_all`` run waiting (in memory) to be put back is lost, unreported,
   when its replica stops normally;
9. a backfill whose claim's reply was lost leaves a slot never sent ``in_flight`` for ever:
   no later backfill sends it;
10. a trigger whose cap place meets a Redis blip leaves its singleton marker for a lease;
11. queued ``buffer_all`` runs (or a held ``buffer_one`` run) are stranded for ever when the
    entry is changed to ``allow`` after its runner died.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import restart_helpers
from celery.beat import BeatLazyFunc
from hand_driven_helpers import RecordingBeat as Beat
from replica_helpers import START, make_scheduler, tick_for
from replica_helpers import make_app as replica_make_app
from restart_helpers import (  # noqa: F401 - the fixtures beats and skips
    KEYS,
    beats_fixture,
    skips_fixture,
    slots_of,
    t,
)
from virtual_time_redis import virtual_redis

from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

TASK = "adv66.job"

#: ``make_app(url, beat_schedule, **conf)``: this round's app; a failed Redis call is not
#: retried (no real sleeps while Redis is down).
make_app = partial(restart_helpers.make_app, "adv66", TASK, fork_scheduler_max_retries=0)
#: ``buffer_all_app(url, **conf)``: entry ``e`` every 2 s, ``buffer_all`` (see restart_helpers).
buffer_all_app = partial(restart_helpers.buffer_all_app, "adv66", TASK)


# -- 1. a one_off entry's run and a Redis restart from a snapshot taken before it -------------


@pytest.mark.parametrize("restart", ["empty", "snapshot"])
@pytest.mark.parametrize("who", ["same-replica", "new-replica"])
@pytest.mark.xfail(
    reason="documented limit (docs/guarantees.md, Redis loses data): a run count lost with the "
    "data starts again from zero",
    strict=True,
)
def test_a_one_off_entry_runs_again_after_a_redis_restart_that_lost_its_run_count(
    beats: list[Any], tmp_path: Path, restart: str, who: str
) -> None:
    """Promise: docs/schedules.md, entry keys: ``max_runs`` "the entry stops after this many
    runs, counted in Redis across replicas and restarts"; ``one_off``: "``True`` is
    ``max_runs=1``: one run, then done"; docs/guarantees.md promise 6 ("``max_runs`` ... hold[s]
    for all replicas together") and the row "Redis loses data": "No duplicates" for Redis
    "restarted from an older snapshot (RDB)" or restarted empty, "Slots due after that are
    claimed as usual".

    Sequence (``e`` every 30 s, ``one_off=True``; Redis on the replicas' clock): Redis saves a
    snapshot at 09:59:59 (``e`` has no state yet: Redis's default save schedule, or an
    append-only file that lost its last second). Replica A publishes ``e``'s one run, 10:00:00
    (the state's ``runs`` is 1 = ``max_runs``). At 10:00:20 Redis crashes and comes back at
    10:00:22, empty or from that snapshot; A keeps running (``same-replica``) or the whole
    cluster restarts with it (``new-replica``: replica B starts, A is gone).

    Expected: the one-off entry never runs again (its one run was published). What happens:
    the run counter and the ``finished`` mark are gone with the data; the write-back of the
    mark only keeps slots up to Redis's start from being won, and the next slot, 10:00:30, is
    won (``runs`` 0 < 1) and published: the one-off job runs twice. A running replica learns
    that an entry is finished only from a later claim (``finished``), so it had not retired
    ``e`` before the restart either. Where: backends/lua.py ``_CLAIM_BODY`` (``max_runs``
    compares with the state's ``runs``, which nothing writes back: only ``hwm`` is restored
    from the replicas' known marks).
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {
            "e": {"task": TASK, "schedule": timedelta(seconds=30), "one_off": True},
        }
        a = Beat(make_app(server.url, schedule), clock, "replica-a")
        beats.append(a)
        a.scheduler.setup_schedule()
        server.save("snapshot.rdb")
        a.run_until(t(20))
        first = slots_of(a)
        assert len(first) == 1, first
        server.crash()
        clock.set(t(22))
        if restart == "empty":
            server.server.drop_data()
            server.server.start()
        else:
            server.start_from("snapshot.rdb")
        if who == "new-replica":
            a.scheduler.close()
            b = Beat(make_app(server.url, schedule), clock, "replica-b")
            beats.append(b)
            b.scheduler.setup_schedule()
        else:
            b = a
        b.run_until(t(130))
    sent = slots_of(a) + ([] if b is a else slots_of(b))
    assert len(sent) == 1, (
        f"one_off entry published {len(sent)} times: {[s.time().isoformat() for s in sent]}"
    )


# -- 2. a broker blip, then lazy arguments that raise when the won slot is asked about again --


class BlipPublisher(RecordingPublisher):
    """Records what it publishes; its first ``prepare`` cannot reach the broker."""

    def __init__(self) -> None:
        super().__init__()
        self.blips = 1

    def prepare(self) -> None:
        if self.blips:
            self.blips -= 1
            raise ConnectionRefusedError(111, "broker restarting")


def test_lazy_arguments_that_raise_at_the_retry_after_a_broker_blip_keep_the_claims_run(
    redis_url: str, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md, failure table, "Lazy ``args``/``kwargs`` raise, or a message
    cannot be built": "The claim is given back before the fence (its run does not count, a
    singleton marker and a place under the cap are freed)"; "How a slot is published", step 0:
    "a message that cannot be built gives its claim back (``entry_failed``, skip reason
    ``error``, never retried)"; docs/schedules.md ``max_runs``.

    Sequence (one replica; ``e`` every 10 s, ``overlap="buffer_one"``, ``max_runs=1``,
    ``"args": [BeatLazyFunc(token)]``): the slot 10:00:10 is won (its lazy item is called for
    the claim's held message and works: run counted, running marker set). The broker cannot
    be reached at that batch's prepare (a blip), so the replica asks about the slot again a
    second later, as documented -- and that retry calls the lazy item again (``_due_slot``
    builds a buffering entry's message for every claim it asks), which now raises (the token
    service is down for a moment).

    Expected: the claim is given back (``runs`` back to 0, marker freed, ``error`` reported)
    and the next slot, 10:00:20, runs: the entry's one run. What happens: the failure is
    reported (``entry_failed``, ``skipped:error``) but the claim is not given back --
    ``Scheduler._decide`` only reports a ``_due_slot`` that raises; nothing calls
    ``mark_skipped``: the state stays ``claimed`` with ``runs=1``, the running marker stays
    for the singleton lease, the pending claim is left to lapse. At 10:00:20 the claim answers
    ``finished``: a ``max_runs=1`` entry is retired having published nothing. (Without
    ``max_runs`` the entry is blocked for ``fork_scheduler_singleton_lease`` instead: its next
    slots are held back or skipped ``busy`` behind a run that does not exist.)
    """
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("token service down")
        return f"t{len(calls)}"

    definition = {
        "task": TASK,
        "schedule": timedelta(seconds=10),
        "overlap": "buffer_one",
        "max_runs": 1,
        "args": [BeatLazyFunc(token)],
    }
    clock = FakeClock(START)
    publisher = BlipPublisher()
    app = replica_make_app(redis_url, {"e": definition})
    scheduler = make_scheduler(redis_url, clock, app=app, publisher=publisher)
    client = redis.Redis.from_url(redis_url)
    try:
        tick_for(scheduler.tick, clock, 13)  # 10:00:10 won, broker blip, asked again: raises
        state = {k.decode(): v.decode() for k, v in client.hgetall(KEYS.state("e")).items()}
        marker = client.get(KEYS.running("e"))
        tick_for(scheduler.tick, clock, 40)
    finally:
        scheduler.close()
    sent = [o.slot.time().isoformat() for o in publisher.occurrences]
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e"]
    assert sent and state.get("runs") in (None, "0") and marker is None, (
        f"published {sent}; after the failure to build: runs={state.get('runs')}, "
        f"state={state.get('state')}, running marker {marker!r}; reported {reported}"
    )


# -- 3. max_runs' last run, and a broker outage that refuses its publish ----------------------


class DownPublisher(RecordingPublisher):
    """Records what it publishes; while ``down``, the broker refuses the send itself (the
    connection was made: ``prepare`` works, the publish raises before anything left)."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.down = True

    def prepare(self) -> None:
        if self.down and self.where == "prepare":
            raise ConnectionRefusedError(111, "broker down")

    def publish(self, occurrence: Any) -> None:
        if self.down and self.where == "publish":
            raise ConnectionRefusedError(111, "broker down")
        super().publish(occurrence)


def test_a_one_off_entry_whose_publish_the_broker_refused_never_runs(
    redis_url: str, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md, failure table, "A publish is refused before anything was
    sent": "A broker error (connection refused, ``OperationalError``) is tried again one second
    later ... while the slot is within the grace ... When it gives up, the failure is recorded
    and the claim closed; the singleton marker and the place under the cap the slot took are
    freed at once (**no run of it exists**)"; docs/schedules.md ``max_runs`` ("the entry stops
    after this many runs") and ``one_off`` ("one run, then done"); promise 6.

    Sequence (one replica; ``e`` every 30 s, ``one_off=True``): the slot 10:00:30 is won (run
    counter 1). The broker is down from before it until 10:00:45: the connection is made
    (``prepare`` works: a pooled connection, or a broker that accepts connections and refuses
    the publish) but each send raises ``ConnectionRefusedError`` -- certainly not sent, a
    transient error: the replica asks again every second, then gives up past the catch-up
    grace (5 s) and records the slot ``failed``. The broker is back at 10:00:45.

    Expected: nothing of the entry ran, so its one run is still owed: the next slot (10:01:00)
    runs -- as it does when the same outage is seen at ``prepare`` instead (the claim is given
    back ``broker_unavailable``, ``MARK_SKIPPED`` gives the run back: that variant passes).
    What happens: ``RECORD_FAILURE`` (backends/lua.py) deletes the pending claim and frees the
    marker ("No run exists") but leaves ``runs`` at 1: at 10:01:00 the claim answers
    ``finished`` and the one-off entry is retired without ever having been published. Which
    of the two paths the same broker outage takes decides whether the entry ever runs.
    """
    definition = {"task": TASK, "schedule": timedelta(seconds=30), "one_off": True}
    clock = FakeClock(START)
    publisher = DownPublisher("publish")  # ("prepare": the same outage, seen earlier, passes)
    app = replica_make_app(redis_url, {"e": definition})
    scheduler = make_scheduler(redis_url, clock, app=app, publisher=publisher)
    client = redis.Redis.from_url(redis_url)
    try:
        tick_for(scheduler.tick, clock, 45)  # 10:00:30 won; the broker is down until 10:00:45
        runs = client.hget(KEYS.state("e"), "runs")
        publisher.down = False
        tick_for(scheduler.tick, clock, 60)
    finally:
        scheduler.close()
    sent = [o.slot.time().isoformat() for o in publisher.occurrences]
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e"]
    assert sent, (
        f"the one-off entry never ran: runs={runs!r} after its only publish was refused; "
        f"reported {reported}"
    )


# -- 4. a held buffer_one run superseded by a claim whose reply was lost -----------------------


def test_a_held_run_superseded_by_a_claim_whose_reply_was_lost_is_never_reported(
    beats: list[Any], tmp_path: Path, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md promise 1 (every unpublished slot "is **reported** (an
    ``entry_skipped`` signal with its reason, a log line, a history item)") and the singleton
    row: "A ``buffer_one`` run held back while no run holds the marker any more (its runner
    died, its publish failed) is superseded by the next slot won, and reported
    ``superseded``"; docs/events.md, ``superseded``: "Reported by the replica that won the
    later slot, with the held run's slot", WARNING. The claim's lost reply: "A lost reply is
    safe too: asked again, the script answers ... that the claim is still its own".

    Sequence (one replica; ``e`` every 2 s, ``overlap="buffer_one"``,
    ``fork_scheduler_singleton_lease=5``; Redis on the replica's clock): 10:00:00 is won and
    published, its runner dies (no worker frees the marker: it expires at 10:00:05);
    10:00:02 is held back, 10:00:04 is ``busy``. The claim of 10:00:06 runs in Redis -- the
    marker is gone, so it wins the slot and supersedes the held run of 10:00:02 (recorded
    ``skipped:superseded``) -- and its reply is lost (a connection reset while reading it, as
    the simulator's ``--partitions`` ``reply_lost``). The replica asks again a second later.

    Expected: the held run of 10:00:02, never published, is reported ``superseded``
    (``entry_skipped`` and the WARNING), as it is when the reply arrives. What happens: asked
    again, the claim finds the replica's own pending claim of 10:00:06 and answers ``won``
    without the superseded message (it was deleted by the first run of the script), so the
    replica never reports 10:00:02: no signal, no log line; only the history item the script
    wrote says so. (10:00:06 is meanwhile reported skipped ``redis_unavailable`` and then
    published.) Found by the simulator: ``scripts/simulate.py --seed 80127 --shared-broker
    --disables --partitions`` ("slot 07:49:41 held back ... while slot 07:49:35 ... was
    neither published nor dropped").
    """
    from lane_helpers import lose_next_reply

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=2), "overlap": "buffer_one"}}
        app = make_app(server.url, schedule, fork_scheduler_singleton_lease=5)
        a = Beat(app, clock, "replica-a")
        beats.append(a)
        a.scheduler.setup_schedule()
        a.run_until(t(5.5))  # 10:00:00 won (marker until 10:00:05), 10:00:02 held, 10:00:04 busy
        client = redis.Redis.from_url(server.url)
        held = client.get(KEYS.buffered("e"))
        assert held is not None and client.get(KEYS.running("e")) is None, (held,)
        lose_next_reply(a.scheduler, "claim_and_send")  # the claim of 10:00:06: reply lost
        a.run_until(t(20))
        history = [h.decode() for h in client.lrange(KEYS.history("e"), 0, -1)]
    sent = [s.time().isoformat() for s in slots_of(a)]
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e"]
    recorded = [h for h in history if '"skipped:superseded"' in h]
    assert t(2) in slots_of(a) or ("10:00:02", "superseded") in reported, (
        f"the held run of 10:00:02 was neither published nor reported (entry_skipped): "
        f"published {sent}, reported {reported}; the history alone says {recorded[-1:]}"
    )


# -- 5. a buffer_all run released by a claim whose reply was lost ------------------------------


def test_a_queued_run_released_by_a_claim_whose_reply_was_lost_is_never_published(
    beats: list[Any], tmp_path: Path, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/singleton.md, ``buffer_all``, "A runner that died": "The next claim of the
    entry finds the marker gone and the queue not empty: it appends its own slot to the queue
    ..., pops the head, sets the marker to it and returns it to the beat replica, which
    publishes it (claim outcome ``released``). So a dead worker delays the queue by at most
    one lease plus one interval, and **loses none of it**"; docs/guarantees.md promise 1 (no
    silent loss: each unpublished slot reported) and, on lost replies, "A lost reply is safe
    too: asked again, the script answers ..." (the backend retries a request whose reply was
    lost: ``_retrying``).

    Sequence (one replica; ``e`` every 2 s, ``overlap="buffer_all"``,
    ``fork_scheduler_singleton_lease=5``; claims and broker on one Redis on the replica's
    clock): 10:00:00 is won and published, its runner dies (the marker expires at 10:00:05);
    10:00:02 and 10:00:04 are queued. The claim of 10:00:06 runs in Redis -- the marker is
    gone, so it queues 10:00:06, pops the head 10:00:02, sets the marker to 10:00:02's task id
    and answers ``released`` with its message -- and that reply is lost (a connection reset
    while reading it, as the simulator's ``--partitions`` ``reply_lost``). The backend sends
    the request again at once (``fork_scheduler_max_retries=2``).

    Expected: 10:00:02 is published (late, once), or at least reported. What happens: asked
    again, the claim finds 10:00:06 decided (at or below the mark, not pending) and answers
    ``claimed``; the popped message of 10:00:02 existed only in the lost reply. 10:00:02 is
    never published and never reported (no signal, no log line, no history item), and its
    task id holds the marker for a whole lease, so the queue stalls behind a run that does
    not exist. (10:00:06 is reported ``claimed`` -- skipped -- and then published in its turn.)
    """
    from lane_helpers import lose_next_reply

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        app = buffer_all_app(server.url, fork_scheduler_max_retries=2)
        a = Beat(app, clock, "replica-a")
        beats.append(a)
        a.scheduler.setup_schedule()
        a.run_until(t(5.5))  # 10:00:00 published; 10:00:02, 10:00:04 queued; the marker expired
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 2 and client.get(KEYS.running("e")) is None
        lose_next_reply(a.scheduler, "claim_and_send")  # the claim of 10:00:06: reply lost
        a.run_until(t(30))
        sent = sorted(
            json.loads(m)["headers"]["fork_scheduler_slot"] for m in client.lrange("celery", 0, -1)
        )
    in_broker = [s[11:19] for s in sent]
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e" and r != "buffered"]
    assert "10:00:02" in in_broker or any(s == "10:00:02" for s, _ in reported), (
        f"10:00:02, released by the claim whose reply was lost, was neither published nor "
        f"reported: the broker holds {in_broker}; reported {reported}"
    )


# -- 6. a broker refusal and a Redis blip in the same second, on the fence path ----------------


class BlipBoth(RecordingPublisher):
    """Records what it publishes; its first publish of ``e`` is refused by the broker
    (certainly not sent) in the same network blip that cuts the replica off from Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.cut: Any = None
        self.armed = True

    def publish(self, occurrence: Any) -> None:
        if self.armed and occurrence.entry == "e":
            self.armed = False
            self.cut.on = True  # the blip reaches Redis too
            raise ConnectionRefusedError(111, "network blip")
        super().publish(occurrence)


def test_a_refused_publish_during_a_redis_blip_is_never_tried_again(
    beats: list[Any],
    tmp_path: Path,
    skips: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/guarantees.md, failure table, "A publish is refused before anything was
    sent": "A broker error (connection refused, ``OperationalError``) is tried again one second
    later through the replica's own fenced claim while the slot is within the grace ... When
    it gives up, the failure is recorded and the claim closed" (``failed`` history item); the
    row "Redis unreachable": "the tick publishes **nothing**, puts its slots back and asks
    again one second later"; promise 5 ("Connection errors are retried"); promise 1 / 4 (no
    silent loss).

    Sequence (one replica, fence path: the broker is not the claims' Redis; ``e`` every 30 s;
    Redis on the replica's clock): at 10:00:00 the slot is won and fenced; its publish is
    refused (``ConnectionRefusedError``: nothing left) by a one-second network blip that also
    cuts the replica off from Redis (connections refused; Redis keeps its data). The blip
    ends at 10:00:01.5; the replica runs on to 10:01:10.

    Expected: 10:00:00 is published once the blip is over (within the grace), or, failing
    that, recorded ``failed`` and reported. What happens: ``PublishPipeline._not_sent`` lifts
    the fence and asks again in one ``suppress(BackendUnavailableError)`` block: ``end_fence``
    raises, so ``ask_again`` is skipped, and ``record_failure`` (the fallback) fails too. The
    slot is never asked about again: it stays ``publishing`` (fenced) in ``P{e}:pending`` for
    ever, no history item, no ``entry_skipped``; the only trace is one ``entry_failed`` for
    the attempt. A message that certainly never left is lost, and a replica starting later
    would report it ``in_flight`` ("may have left").
    """
    from test_adversary_round60 import CutOff

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=30)}}
        publisher = BlipBoth()
        a = Beat(make_app(server.url, schedule), clock, "replica-a", publisher=publisher)
        beats.append(a)
        publisher.cut = CutOff(a)
        a.scheduler.setup_schedule()
        a.run_until(t(1.5))  # 10:00:00 won, fenced, refused; Redis away for the rest of it
        publisher.cut.on = False
        a.run_until(t(70))
        client = redis.Redis.from_url(server.url)
        pending = {k.decode(): v.decode() for k, v in client.hgetall(KEYS.pending("e")).items()}
        history = [json.loads(h) for h in client.lrange(KEYS.history("e"), 0, -1)]
    first = int(t(0).timestamp() * 1_000_000)
    outcomes = [h["outcome"] for h in history if int(h["slot"]) == first]
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e"]
    assert t(0) in slots_of(a) or "failed" in outcomes, (
        f"10:00:00 (refused by the broker, nothing sent) was never tried again: published "
        f"{[s.time().isoformat() for s in slots_of(a)]}; pending {pending}; history of the slot "
        f"{outcomes}; entry_skipped {reported}"
    )


# -- 7. a released run put back, and the put-back's reply lost ---------------------------------


def test_a_released_run_put_back_twice_after_a_lost_reply_is_published_twice(
    beats: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: docs/guarantees.md promise 1 ("each slot of each entry is published at most
    once"); docs/singleton.md, ``buffer_all``, "A runner that died": "When Redis keeps that run
    from leaving (confirming the hand-over or taking its place under the cap fails), the
    replica puts it back at the head of the queue (at its next ticks while Redis is away,
    within the marker's lease), and the next claim releases it again"; promise 5 ("Connection
    errors are retried").

    Sequence (one replica; ``e`` every 2 s, ``overlap="buffer_all"``,
    ``fork_scheduler_max_concurrent=10``, ``fork_scheduler_singleton_lease=5``; claims and
    broker on one Redis on the replica's clock): 10:00:00 runs and its runner dies (the
    marker expires at 10:00:05); 10:00:02 and 10:00:04 are queued. At 10:00:06 the claim
    releases the head, 10:00:02 (marker handed to it). A network blip: taking its place under
    the cap fails (``HeldNotSent``) and so does the first put-back (refused). At the next tick
    (10:00:06.25) the put-back (``GIVE_BACK_HELD``, "unconfirmed") runs in Redis -- 10:00:02
    is pushed back at the head -- and its reply is lost (a connection reset while reading it,
    as the simulator's ``reply_lost``); the replica keeps it in ``_to_put_back`` and, at the
    next tick, puts it back again.

    Expected: 10:00:02 is put back once and published once. What happens: ``GIVE_BACK_HELD``
    is not idempotent -- ``hold_again`` does ``LPUSH`` whatever the queue holds -- so the
    second put-back queues 10:00:02 a second time (``[02, 02, 04, 06]``, and ``runs`` is given
    back twice); both copies are released in turn and 10:00:02 reaches the broker twice, with
    the same task id. Where: ``Scheduler._put_back_released`` (retries a put-back whose
    outcome it does not know) and backends/lua.py ``GIVE_BACK_HELD``.
    """
    from test_adversary_round60 import CutOff

    from celery_fork_scheduler import held as held_module

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        app = buffer_all_app(server.url, fork_scheduler_max_concurrent=10)
        a = Beat(app, clock, "replica-a")
        beats.append(a)
        cut = CutOff(a)
        a.scheduler.setup_schedule()
        a.run_until(t(5.5))  # 10:00:00 published; 10:00:02, 10:00:04 queued; the marker expired
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 2 and client.get(KEYS.running("e")) is None

        publish_released = a.scheduler._publish_released

        def blip_during_hand_over(result: Any) -> None:
            cut.on = True  # the hand-over's cap place cannot be taken: put back (also refused)
            try:
                publish_released(result)
            finally:
                cut.on = False

        monkeypatch.setattr(a.scheduler, "_publish_released", blip_during_hand_over)
        real_give_back = held_module.HeldRuns.give_back
        calls = [0]

        def give_back(self: Any, *args: Any, **kwargs: Any) -> None:
            calls[0] += 1
            if calls[0] == 2:  # the put-back at the next tick runs in Redis; its reply is lost
                self.client.ping()  # (the connection is up: only the script's reply is lost)
                cut.replies_lost = True
            try:
                real_give_back(self, *args, **kwargs)
            finally:
                cut.replies_lost = False

        monkeypatch.setattr(held_module.HeldRuns, "give_back", give_back)
        a.run_until(t(7))  # 10:00:06's claim releases 10:00:02: not sent, put back
        monkeypatch.setattr(a.scheduler, "_publish_released", publish_released)
        queue = [json.loads(m)["slot"][11:19] for m in client.lrange(KEYS.buffered("e"), 0, -1)]
        a.run_until(t(40))
        sent = [
            json.loads(m)["headers"]["fork_scheduler_slot"][11:19]
            for m in client.lrange("celery", 0, -1)
        ]
    twice = sorted({s for s in sent if sent.count(s) > 1})
    assert twice == [], (
        f"published twice: {twice} (the broker holds {sorted(sent)}; the queue after the "
        f"put-back was {queue})"
    )


# -- 8. a released run waiting to be put back, and a normal stop -------------------------------


def test_a_released_run_waiting_to_be_put_back_is_lost_when_its_replica_stops(
    beats: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    skips: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/singleton.md, ``buffer_all``, "A runner that died": "a dead worker delays
    the queue by at most one lease plus one interval, and **loses none of it**. When Redis
    keeps that run from leaving (confirming the hand-over or taking its place under the cap
    fails), the replica puts it back at the head of the queue (at its next ticks while Redis
    is away, within the marker's lease), and the next claim releases it again";
    docs/guarantees.md, "A normal stop (SIGTERM, SIGINT: a rolling deploy)": "Nothing is lost
    and nothing is late"; promise 1 (no silent loss).

    Sequence (``e`` every 2 s, ``overlap="buffer_all"``, ``fork_scheduler_max_concurrent=10``,
    ``fork_scheduler_singleton_lease=5``; claims and broker on one Redis on the replicas'
    clock): replica A publishes 10:00:00, whose runner dies (marker expires at 10:00:05);
    10:00:02 and 10:00:04 are queued. At 10:00:06 A's claim releases the head, 10:00:02; a
    network blip between A and Redis begins just then: the cap place cannot be taken
    (``HeldNotSent``) and the put-back is refused; A logs "could not send the queued run of e
    ...; it is put back" and keeps it for its next ticks. At 10:00:06.5, Redis still away from
    A, A is stopped normally (a rolling deploy: Celery calls ``sync`` and ``close``); the blip
    ends and replica B (the new version) runs on to 10:00:40.

    Expected: 10:00:02 is put back (at the stop, or by whoever releases the entry next) and
    published, or at least reported. What happens: the run waits only in A's memory
    (``Scheduler._to_put_back``), which ``sync`` and ``close`` ignore; A exits without a word.
    The marker naming 10:00:02 expires, B's claims release 10:00:04, 10:00:06, ... and
    10:00:02 is never published and never reported (no signal, no history item; the one log
    line said it was put back). The same list is also dropped without a word when A stays
    cut off for longer than the marker's lease (``_put_back_released`` deletes what it has
    not put back once the lease ends; read in the code, not run here).
    """
    from test_adversary_round60 import CutOff

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))

        def app() -> Any:
            return buffer_all_app(server.url, fork_scheduler_max_concurrent=10)

        a = Beat(app(), clock, "replica-a")
        beats.append(a)
        cut = CutOff(a)
        a.scheduler.setup_schedule()
        a.run_until(t(5.5))  # 10:00:00 published; 10:00:02, 10:00:04 queued; the marker expired
        publish_released = a.scheduler._publish_released

        def blip_begins(result: Any) -> None:
            cut.on = True  # from the hand-over on, A cannot reach Redis
            publish_released(result)

        monkeypatch.setattr(a.scheduler, "_publish_released", blip_begins)
        a.run_until(t(6.5))  # 10:00:02 released, not sent, not put back yet
        a.scheduler.sync()  # a normal stop, Redis still away from A
        a.scheduler.close()
        cut.on = False
        b = Beat(app(), clock, "replica-b")
        beats.append(b)
        b.scheduler.setup_schedule()
        b.run_until(t(40))
        client = redis.Redis.from_url(server.url)
        sent = sorted(
            json.loads(m)["headers"]["fork_scheduler_slot"][11:19]
            for m in client.lrange("celery", 0, -1)
        )
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e" and r != "buffered"]
    assert "10:00:02" in sent or any(s == "10:00:02" for s, _ in reported), (
        f"10:00:02 (released, then waiting in the stopped replica's memory to be put back) was "
        f"neither published nor reported: the broker holds {sent}; reported {reported}"
    )


# -- 9. a backfill whose claim's reply was lost ------------------------------------------------


def test_a_backfill_whose_claim_reply_was_lost_leaves_a_never_sent_slot_in_flight_for_ever(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: docs/manager.md, Backfill: it "publishes each slot of the entry's schedule in
    ``[start, end]`` ... that was **never published**", "once across the cluster: ... a repeated
    backfill ... publish[es] it once"; "Crashes: at most once": the one case left ``publishing``
    for ever is "A backfill **killed** between the two" (claim and record); round 63 made a
    backfill whose lazy arguments raise record ``failed`` instead of leaving the slot in
    flight for ever. Promise 5 ("Connection errors are retried").

    Sequence: a static entry every 30 s whose high-water mark is past 10:00:30 (the slot was
    missed: an outage, catch-up off). ``manager.backfill("e", 10:00:30, 10:00:30,
    force=True)``: its ``BACKFILL_CLAIM`` runs in Redis (the slot is marked
    ``publishing|<backfill id>``) and its reply is lost (a connection reset while reading it);
    the backfill raises ``TimeoutError`` before any publish. The operator runs the same
    backfill again.

    Expected: nothing was sent, so the repeated backfill sends the slot (or the first one asks
    again and sends it). What happens: the claim is not retried (the Manager's client has no
    retries, ``backfill`` none of its own) and nothing records the claim as unsent: every later
    backfill, ``force`` or not, answers ``skipped:in_flight`` ("the message may have left")
    for a slot whose message never existed; only an ``HDEL`` by hand after searching the
    broker gets it sent.
    """
    from celery_fork_scheduler import Manager
    from celery_fork_scheduler import backfill as backfill_module
    from celery_fork_scheduler.backends.lua import BACKFILL_CLAIM

    app = replica_make_app(redis_url, {"e": {"task": TASK, "schedule": 30.0}})
    manager = Manager(app)
    client = redis.Redis.from_url(redis_url)
    mark = int(datetime(2026, 3, 2, 10, 1, tzinfo=timezone.utc).timestamp() * 1_000_000)
    client.hset(KEYS.state("e"), mapping={"hwm": mark, "state": "sent"})
    slot = datetime(2026, 3, 2, 10, 0, 30, tzinfo=timezone.utc)

    managers_client = manager._redis()
    managers_client.script_load(BACKFILL_CLAIM)  # (EVALSHA finds it: the script runs)
    lost = [False]
    pool = managers_client.connection_pool
    base = pool.connection_class

    class RepliesLost(base):  # type: ignore[misc, valid-type]
        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            response = super().read_response(*args, **kwargs)
            if lost[0]:
                lost[0] = False
                self.disconnect()
                raise redis.TimeoutError("the answer was lost (test partition)")
            return response

    pool.connection_class = RepliesLost
    pool.reset()
    real_decide = backfill_module._Run.decide
    calls = [0]

    def decide(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            self.client.ping()  # the connection is up: only the claim's reply is lost
            lost[0] = True
        return real_decide(self, *args, **kwargs)

    monkeypatch.setattr(backfill_module._Run, "decide", decide)
    try:
        first: Any = [r.outcome for r in manager.backfill("e", slot, slot, force=True)]
    except Exception as exc:
        first = f"raised {type(exc).__name__}"
    second = [r.outcome for r in manager.backfill("e", slot, slot, force=True)]
    assert ["sent"] in (first, second), (
        f"first backfill: {first}; the same backfill again: {second} "
        f"(P{{e}}:backfill = {client.hgetall(KEYS.backfill('e'))}): nothing was ever sent"
    )


# -- 10. a trigger whose cap place cannot be taken (a Redis blip) ------------------------------


def test_a_trigger_refused_by_a_redis_blip_at_its_cap_place_leaves_the_marker_for_a_lease(
    redis_url: str,
) -> None:
    """Promise: docs/manager.md, Triggering: "Redis and then the broker are reached first.
    When Redis cannot be, nothing is sent and the Redis error (``redis.ConnectionError``, ...)
    is raised"; "After this or any other failure to send, its singleton marker and place under
    the cap are given back at once (they do not block the entry for a lease)"; the method's
    docstring: "After any failure to send, the marker and the place are given back at once"
    (round 63 fixed the same leak for lazy arguments that raise).

    Sequence: a static singleton entry (``"singleton": True``) under
    ``fork_scheduler_max_concurrent = 5``. ``manager.trigger("e")``: the marker is taken
    (``SET NX``), then the one command that takes the cap place (``TAKE_CAP_PLACES``) meets a
    Redis blip (connection refused: the script never ran); the blip is over by the next
    command.

    Expected: nothing was sent; ``trigger`` raises the Redis error and the entry is not left
    blocked: no marker held by a run that does not exist. What happens: ``Manager.trigger``
    takes the marker and the cap place outside the ``try`` that gives them back, so the
    ``ConnectionError`` leaves the trigger's task id in the running marker for the whole
    ``fork_scheduler_singleton_lease`` (60 s): every scheduled slot meanwhile is skipped
    ``busy``, and another ``trigger`` says ``skipped="busy"``. (The same for a blip at the
    ``latest_run`` write of a ``cancel_other`` entry: marker and cap place both stay.)
    """
    from celery_fork_scheduler import Manager

    definition = {"task": TASK, "schedule": 30.0, "singleton": True}
    app = replica_make_app(redis_url, {"e": definition}, fork_scheduler_max_concurrent=5)
    manager = Manager(app)
    managers_client = manager._redis()
    refuse = [False]
    pool = managers_client.connection_pool
    base = pool.connection_class

    class Blip(base):  # type: ignore[misc, valid-type]
        def send_packed_command(self, command: Any, *args: Any, **kwargs: Any) -> None:
            packed = b"".join(command) if isinstance(command, list | tuple) else command
            if refuse[0] and b"EVAL" in packed:
                refuse[0] = False
                self.disconnect()
                raise redis.ConnectionError("connection refused (test blip)")
            super().send_packed_command(command, *args, **kwargs)

    pool.connection_class = Blip
    pool.reset()
    refuse[0] = True  # the first script call of the trigger: TAKE_CAP_PLACES
    with pytest.raises(redis.ConnectionError):
        manager.trigger("e")
    client = redis.Redis.from_url(redis_url)
    held = {
        "running marker": client.get(KEYS.running("e")),
        "cap places": client.zrange(KEYS.cap, 0, -1),
    }
    again = manager.trigger("e")
    assert held == {"running marker": None, "cap places": []}, (
        f"a trigger that sent nothing left {held} behind for the singleton lease "
        f"({client.pttl(KEYS.running('e'))} ms); a second trigger: skipped={again.skipped!r}"
    )


# -- 11. buffer_all changed to allow while its runner is dead ----------------------------------


@pytest.mark.parametrize("before", ["buffer_all", "buffer_one"])
def test_queued_runs_are_stranded_when_buffer_all_is_changed_to_allow_after_the_runner_died(
    beats: list[Any], tmp_path: Path, skips: list[tuple[str, datetime, str]], before: str
) -> None:
    """Promise: docs/singleton.md, ``buffer_all``: "A runner that died. When the worker running
    the entry is killed, nothing pops the queue; the marker expires after its lease. The next
    claim of the entry finds the marker gone and the queue not empty: it ... pops the head
    ... So a dead worker delays the queue by at most one lease plus one interval, and **loses
    none of it**"; "A change from ``buffer_all`` to another policy leaves the queue to be
    handed over as the running run ends"; docs/guarantees.md promise 1 (no silent loss) and
    the runtime row ("Slots of the earlier definition already due at that instant still
    fire").

    Sequence (a runtime entry ``e`` every 2 s, ``overlap="buffer_all"``,
    ``fork_scheduler_singleton_lease=5``; claims and broker on one Redis on the replica's
    clock): 10:00:00 is published and its worker is killed (the marker expires at
    10:00:05); 10:00:02 and 10:00:04 are queued behind it. At 10:00:04.5 an operator changes
    the entry to ``overlap="allow"`` (``Manager.update``: runs may overlap from now on). The
    replica runs on to 10:00:40.

    Expected: the two queued runs, due before the change, are still published (the next claim
    finds the marker gone and releases the queue, as it would have under ``buffer_all``), or
    reported. What happens: the running run never ends (its worker is dead), so nothing
    hands the queue over; the claims under ``allow`` neither look at the queue nor take the
    marker, so no run of the entry ever releases it again. 10:00:06, 10:00:08, ... are
    published; 10:00:02 and 10:00:04 stay in ``P{e}:buffered`` for ever: never published, never
    reported (no signal, no history item). The same with ``buffer_one`` changed to ``allow``
    (the ``before="buffer_one"`` case): the run held back for 10:00:02 is neither handed over
    nor superseded ("A ``buffer_one`` run held back while no run holds the marker any more ...
    is superseded by the next slot won, and reported ``superseded``": the claims under
    ``allow`` do not look at it), and stays in ``P{e}:buffered`` for ever.
    """
    from celery_fork_scheduler import Manager

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        app = restart_helpers.make_app(
            "adv66",
            TASK,
            server.url,
            {},
            broker=server.url,
            fork_scheduler_singleton_lease=5,
            fork_scheduler_max_retries=0,
        )
        manager = Manager(app, clock=clock)
        manager.add("e", TASK, timedelta(seconds=2), overlap=before)
        a = Beat(app, clock, "replica-a")
        beats.append(a)
        a.scheduler.setup_schedule()
        a.run_until(t(4.5))  # 10:00:00 published (its worker dies); 10:00:02 (and 04) held
        client = redis.Redis.from_url(server.url)
        assert client.exists(KEYS.buffered("e"))
        manager.update("e", overlap="allow")
        a.run_until(t(40))
        released = sorted(
            json.loads(m)["headers"]["fork_scheduler_slot"][11:19]
            for m in client.lrange("celery", 0, -1)
        )
        kept = client.get(KEYS.buffered("e")) if before == "buffer_one" else None
        listed = client.lrange(KEYS.buffered("e"), 0, -1) if before == "buffer_all" else []
        queue = [json.loads(m)["slot"][11:19] for m in ([kept] if kept else listed)]
    published = sorted({*[s.time().isoformat() for s in slots_of(a)], *released})
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e" and r != "buffered"]
    lost = [s for s in ("10:00:02", "10:00:04") if s not in published]
    lost = [s for s in lost if s not in {slot for slot, _ in reported}]
    assert lost == [], (
        f"queued runs {lost} neither published nor reported; still queued: {queue}; "
        f"published {published[:6]}..."
    )
