"""Adversary round 55: the restart rule of rounds 53-54 (a slot due in the hour before Redis's
start that its data does not decide, a claim made before that start, a held run of a slot due
before it: ``unknown``) and what it leaves beside it.

Each test's docstring names the promise (with its page), the sequence, what was expected and
what happened, and where. Claims are on a real ``redis-server`` whose clock is the replicas'
fake clock (``virtual_time_redis``): the test crashes it and brings it back from a snapshot
saved earlier, at an instant of the same clock.

Found failing by round 55 (at ee3e164): 3, 4, 5 and 6 fixed (a claim reports the queued runs
it drops; it drops them before it counts the queue; the rule judges a jittered slot at its
publish instant; RELEASE drops every stale head and hands over the first later run). 1, 2, 7, 8
and 9 are documented limits (strict xfail):

1. a held run (``buffer_one``/``buffer_all``) of a slot due more than an hour before Redis's
   start, released in the minutes before the crash, is handed over again (duplicate);
2. a replica's own claim refused at its fence after a restart (BEGIN_PUBLISH 0) is reported
   ``claimed`` at DEBUG, recorded nowhere: a silent miss (7: the same for PUBLISH_ONCE);
3. the ``buffer_all`` heads a claim drops as ``unknown`` are never reported (no signal, no log);
4. a full ``buffer_all`` queue of restored runs: the claim refuses the new slot ``buffer_full``,
   then empties the queue: the slot after the restart never runs;
5. a jittered slot whose publish instant comes after Redis's start (nobody could have claimed
   it) is refused ``unknown`` even after a restart that lost nothing;
6. a run queued after the restart behind a stale head is not handed over when the running run
   ends (RELEASE stops at the dropped head): never published past ``end_at``;
8. a Redis whose clock steps forward after its start (boot before NTP) puts its start too early:
   a new replica wins again slots published before the crash (duplicates);
9. a backfill repeated after a restore sends again old slots it sent in the minutes before the
   crash (the backfill rule's hour bounds the slot, not the publish).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import restart_helpers
from hand_driven_helpers import HandDrivenWorker
from hand_driven_helpers import RecordingBeat as Beat
from heartbeat_helpers import OnePass
from restart_helpers import (  # noqa: F401 - the fixtures beats, workers, skips
    BASE,
    KEYS,
    beat_with_worker,
    beats_fixture,
    skips_fixture,
    slots_of,
    t,
    workers_fixture,
)
from virtual_time_redis import virtual_redis

from celery_fork_scheduler import Manager, Scheduler
from celery_fork_scheduler import held as held_module
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings

#: The task of every entry.
TASK = "adv55.job"


#: ``make_app(url, beat_schedule, **conf)``: the app of this round; a failed Redis call is not
#: retried (no real sleeps while Redis is down).
make_app = partial(restart_helpers.make_app, "adv55", TASK, fork_scheduler_max_retries=0)


def us(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1_000_000))


# -- 1. a held run of a slot due more than an hour before the start, released in that hour -----


@pytest.mark.xfail(
    strict=True,
    reason=(
        "documented limit (guarantees.md, Redis loses data): the held-run rule covers "
        "slots due in the hour before Redis's start, not runs released in it"
    ),
)
@pytest.mark.parametrize("overlap", ["buffer_one", "buffer_all"])
def test_a_run_held_over_an_hour_and_released_before_an_rdb_restore_is_sent_again(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: Any,
    overlap: str,
) -> None:
    """Promise: docs/guarantees.md promise 1 ("each slot of each entry is published at most
    once") and the failure row "Redis loses data": "No duplicates" for Redis "restarted from an
    older snapshot (RDB)" -- "A held run (``buffer_one``, ``buffer_all``) of a slot due before
    that start is not handed over (reported ``unknown``)". The page names no bound on how long
    before the start the held run's slot may be due.

    Sequence (one beat replica, one worker; ``e`` every 5 s, ``overlap="buffer_one"`` or
    ``"buffer_all"``, singleton lease 3 h so a long run keeps its marker; Redis with RDB): run
    R0 of 10:00:00 starts (marker R0) and runs for 70 minutes; the claim of 10:00:05 holds it
    back (H) behind R0 (under ``buffer_one`` the later slots are ``busy`` while H is held, so
    the held run is always the oldest slot; the replica's later ticks change nothing here).
    At 11:10:00 Redis's save point falls (marker R0, queue [H]). R0 ends at 11:10:01: RELEASE
    hands the marker to H, the worker publishes H (10:00:05), H starts. At 11:15 Redis crashes
    and comes back at once from the 5-minute-old snapshot (marker R0, queue [H]). The worker's
    heartbeat sees the restart and H takes its marker back (as documented since round 52); H
    ends.

    Expected: 10:00:05 is published once (the snapshot is only 5 minutes old, well within
    the hour the rule assumes; the held run it brings back was handed over after it). What
    happens: RELEASE at H's end pops the restored queue's head -- H itself -- and, its slot
    being due more than an hour before Redis's start, ``held_before_restart`` says no: it is
    handed over (``send``) and the worker publishes 10:00:05 a second time, same task id.
    Where: backends/lua.py ``_HELD_BEFORE_RESTART`` (bounds the held run by its *slot*'s age,
    ``slot <= started - CLOCKS_DISAGREE_US``, when what the snapshot may have missed is its
    *release*, which comes whenever the run before it ends) used by ``RELEASE`` (and by the
    ``buffer_all`` release inside ``_CLAIM_BODY``).
    """
    sent: list[Any] = []  # what the worker publishes (held runs go through Celery)
    monkeypatch.setattr(held_module.CeleryPublisher, "publish", lambda self, o: sent.append(o))
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5), "overlap": overlap}}
        app = make_app(server.url, schedule, fork_scheduler_singleton_lease=3 * 3600)
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(1))
        assert slots_of(beat) == [t(0)]
        r0_id, r0_headers = beat.headers("e", t(0))
        assert worker.start(r0_id, r0_headers)
        beat.run_until(t(6))  # 10:00:05 is queued behind R0 (the replica then stops ticking)
        client = redis.Redis.from_url(server.url)
        assert client.exists(KEYS.buffered("e"))

        clock.set(t(4200))  # 11:10:00: R0 still runs
        server.save("snapshot.rdb")  # the save point: marker R0, queue [H]
        clock.advance(1)
        worker.end(r0_id)  # RELEASE: H gets the marker and is published by the worker
        assert [o.slot for o in sent] == [t(5)]
        h = sent[0]
        assert worker.start(h.task_id, dict(h.headers))  # H executes
        worker.hooks._beat_hearts(OnePass())  # type: ignore[arg-type]  # notes Redis's run_id

        clock.set(t(4500))  # 11:15:00
        server.crash()  # Redis crashes, back at once from the 5-minute-old snapshot
        server.start_from("snapshot.rdb")
        clock.advance(2)
        assert client.get(KEYS.running("e")) == r0_id.encode()
        worker.hooks._beat_hearts(OnePass())  # type: ignore[arg-type]  # sees the restart
        worker.end(h.task_id)  # H ends

    counts = Counter((o.slot, o.task_id) for o in sent)
    twice = [slot.time().isoformat() for (slot, _), n in counts.items() if n > 1]
    assert twice == [], f"held run published twice by the worker: {twice}"


# -- 2. the owner's fence refused after a restart: reported "claimed", recorded nowhere --------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "documented limit (guarantees.md, Redis loses data): a claim refused at its fence "
        "after a restart is reported claimed, not unknown"
    ),
)
def test_a_claim_refused_at_its_own_fence_after_a_redis_restart_is_reported_claimed(
    beats: list[Any], tmp_path: Path, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md promise 1: a slot that is not published is **reported**
    ("an ``entry_skipped`` signal with its reason, a log line, a history item"); the row "Redis
    loses data": a claim made before Redis's start "is fenced and published by nobody, its own
    replica included", and such slots are reported skipped ``unknown`` (WARNING). docs/events.md,
    skip reasons: ``claimed`` means "another replica already handled this slot: it published
    it, or it skipped it and recorded why" (not recorded, DEBUG: "the other replica's record
    is the one").

    Sequence (one beat replica A, the only one; ``e`` every 5 s; fence path: the recording
    publisher does not share the claims' Redis): at 10:00:10 A wins 10:00:10. Between its
    claim's reply and its fence (the next call of the same tick), Redis restarts -- saved and
    brought back at once, nothing lost (a ``SHUTDOWN SAVE``, an AOF restart; a client retry hides
    it from A). A fences 10:00:10.

    Expected: 10:00:10 is published (nothing was lost) or, under the restart rule, reported
    skipped ``unknown`` (WARNING, ``entry_skipped`` reason ``unknown``). What happens: BEGIN_PUBLISH
    answers 0 (``claimed_before_restart``) and the pipeline reports the slot ``claimed`` at DEBUG,
    as if another replica had published it; no replica exists that did, nothing is recorded
    (the claim stays pending, unsent, with no history item): the slot is silently lost.
    Where: pipeline.py ``Pipeline._still_held`` (every refused fence is reported ``claimed``)
    with backends/lua.py ``BEGIN_PUBLISH`` (the same 0 for "taken over" and "brought back by a
    restart"); ``_report_once`` does the same for ``PUBLISH_ONCE``'s 0.
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        client = redis.Redis.from_url(server.url)
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5)}}
        a = Beat(make_app(server.url, schedule), clock, "replica-a")
        beats.append(a)
        a.scheduler.setup_schedule()
        a.run_until(t(9))
        assert slots_of(a) == [t(5)]

        backend = a.scheduler.backend
        real_begin = backend.begin_publish
        restarted: list[bool] = []

        def begin_publish(claims: Any) -> Any:
            if not restarted and claims:
                restarted.append(True)
                server.save("snapshot.rdb")  # a restart that loses nothing
                server.crash()
                clock.advance(1)
                server.start_from("snapshot.rdb")
            return real_begin(claims)

        backend.begin_publish = begin_publish  # type: ignore[method-assign]
        a.run_until(t(12))
        assert restarted
        assert client.hexists(KEYS.pending("e"), us(t(10)))  # 10:00:10: claimed, never sent

    assert t(10) not in slots_of(a)
    reasons = [reason for entry, slot, reason in skips if entry == "e" and slot == t(10)]
    assert reasons == ["unknown"], (
        f"10:00:10, claimed by A and never published by anyone, is reported {reasons} "
        "(claimed: 'another replica already handled this slot')"
    )


# -- 3. queued runs dropped inside the claim: recorded, never reported -------------------------


def test_queued_runs_the_claim_drops_after_an_rdb_restore_are_never_reported(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: Any,
    skips: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/guarantees.md promise 1: each exception "is **reported** (an
    ``entry_skipped`` signal with its reason, a log line, a history item)"; docs/events.md,
    reason ``unknown`` (logged at WARNING); the row "Redis loses data": "A held run
    (``buffer_one``, ``buffer_all``) of a slot due before that start is not handed over
    (reported ``unknown``)". The claim's other drop of a held run, ``superseded``, is
    "Reported by the replica that won the later slot, with the held run's slot".

    Sequence (one beat replica, one worker; ``e`` every 5 s, ``overlap="buffer_all"``, singleton
    lease 10 s; Redis with RDB): R0 of 10:00:00 starts; 10:00:05 is queued behind it (H).
    Redis's save point falls at 10:00:06 (marker R0, queue [H]). R0 ends: the worker publishes
    H, H runs and ends. Redis crashes and comes back from the snapshot (queue [H]); R0's marker
    expires. The beat replica ticks on: the claim of 10:00:15 finds nobody running and the
    queue's head H due before Redis's start, and drops it (``skipped:unknown`` in the history).

    Expected: the drop of 10:00:05 is reported -- ``entry_skipped`` with reason ``unknown`` and
    a WARNING, by the replica whose claim dropped it, as it reports a ``superseded`` held run.
    What happens: a history item and the ``skips:unknown`` counter only: the claim's reply
    (``released`` with the next head, or ``buffered``) does not carry the dropped heads, so no
    signal and no log line is sent for 10:00:05. Where: backends/lua.py ``_CLAIM_BODY`` (the
    ``buffer_all`` release loop over ``held_before_restart`` heads records them and answers
    without them) and scheduler.py (``_report_superseded`` has no counterpart).
    """
    sent: list[Any] = []
    monkeypatch.setattr(held_module.CeleryPublisher, "publish", lambda self, o: sent.append(o))
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5), "overlap": "buffer_all"}}
        app = make_app(server.url, schedule, fork_scheduler_singleton_lease=10)
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(0.5))
        r0_id, r0_headers = beat.headers("e", t(0))
        assert worker.start(r0_id, r0_headers)
        beat.run_until(t(6))
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 1
        server.save("snapshot.rdb")

        worker.end(r0_id)
        assert [o.slot for o in sent] == [t(5)]
        h = sent[0]
        assert worker.start(h.task_id, dict(h.headers))
        worker.end(h.task_id)

        server.crash()
        server.start_from("snapshot.rdb")
        beat.run_until(t(16))
        history = [
            item for item in client.lrange(KEYS.history("e"), 0, -1) if b"skipped:unknown" in item
        ]
        assert history, "the claim dropped the restored head (recorded skipped:unknown)"

    reasons = [reason for entry, slot, reason in skips if entry == "e" and slot == t(5)]
    assert "unknown" in reasons, (
        f"10:00:05 dropped by the claim (history skipped:unknown) is reported {reasons}: "
        "no entry_skipped, no log line"
    )


# -- 4. a full queue of restored runs: the new slot is refused "buffer_full" into an empty queue -


def test_a_full_buffer_all_queue_dropped_after_an_rdb_restore_refuses_the_new_slot_as_full(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: Any,
    skips: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/guarantees.md promise 1 ("While Redis is reachable and at least one replica
    is healthy, every slot is published"; the exceptions are the table's); docs/events.md,
    ``buffer_full``: "``fork_scheduler_buffer_limit`` runs are queued already; the slot is not
    run"; the row "Redis loses data": "Slots due after that [the start plus 0.5 s] are claimed
    as usual."

    Sequence (one beat replica, one worker; ``e`` every 5 s, ``overlap="buffer_all"``,
    ``fork_scheduler_buffer_limit=1``, singleton lease 10 s; Redis with RDB): R0 of 10:00:00
    starts; 10:00:05 is queued behind it (the queue is full). Redis's save point falls at
    10:00:06. R0 ends, the worker publishes 10:00:05, which runs and ends. Redis crashes and
    comes back from the snapshot (queue [10:00:05], full); R0's restored marker expires. The
    claim of 10:00:15 (well after Redis's start) finds nobody running.

    Expected: 10:00:15 runs: the restored head is dropped (``unknown``), which leaves the
    queue empty and nobody running. What happens: the claim first finds the queue full and
    refuses 10:00:15 (``buffer_full``, recorded, not queued), then pops and drops the stale
    head, and answers ``buffer_full`` with an empty queue and no marker: 10:00:15 is never run,
    reported ``buffer_full`` though nothing is queued. Where: backends/lua.py ``_CLAIM_BODY``,
    the ``buffer_all`` branch: the ``LLEN`` check against ``ARGV[17]`` comes before the
    ``held_before_restart`` drop loop, and ``if not head then return {reason, 0}``.
    """
    sent: list[Any] = []
    monkeypatch.setattr(held_module.CeleryPublisher, "publish", lambda self, o: sent.append(o))
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5), "overlap": "buffer_all"}}
        app = make_app(
            server.url, schedule, fork_scheduler_singleton_lease=10, fork_scheduler_buffer_limit=1
        )
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(0.5))
        r0_id, r0_headers = beat.headers("e", t(0))
        assert worker.start(r0_id, r0_headers)
        beat.run_until(t(6))
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 1
        server.save("snapshot.rdb")

        worker.end(r0_id)
        assert [o.slot for o in sent] == [t(5)]
        h = sent[0]
        assert worker.start(h.task_id, dict(h.headers))
        worker.end(h.task_id)

        server.crash()
        server.start_from("snapshot.rdb")
        beat.run_until(t(16))

    run_15 = [o for o in [*sent, *beat.publisher.occurrences] if o.slot == t(15)]
    reasons = [reason for entry, slot, reason in skips if entry == "e" and slot == t(15)]
    assert run_15, (
        f"10:00:15, due after Redis's start with nobody running and the restored queue dropped, "
        f"is not run (reported {reasons})"
    )


# -- 5. a jittered slot whose publish instant comes after Redis's start is refused "unknown" ----


def test_a_jittered_slot_not_yet_publishable_at_a_lossless_redis_restart_is_never_published(
    beats: list[Any], tmp_path: Path, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/guarantees.md promise 2: "An entry with jitter is not claimed nor published
    before its slot plus the slot's offset"; docs/schedules.md, Jitter: "jitter changes *when* a
    slot is published, never *which* slots exist or how often each is published (once)"; the
    row "Redis loses data": the rule refuses a slot "that the data does not decide" because
    "another replica may already have claimed and published" it; its price is "the slots due
    between Redis's crash and its start plus 0.5 s".

    Sequence (one beat replica; ``e`` every 60 s with ``jitter=50``: the offset of 10:01:00 is
    37.6 s, so it is published at 10:01:37.6, on every replica alike): 10:00:00 is published at
    10:00:09.9. At 10:01:03 Redis restarts -- saved and back at 10:01:05 with all its data
    (a ``SHUTDOWN SAVE``, an ``appendfsync always`` AOF). The replica ticks on.

    Expected: 10:01:00 is published at 10:01:37.6: no replica could have claimed it before
    Redis's start (its publish instant, 32 s after the start, is the earliest any replica asks
    for it), and the restart lost nothing. What happens: the claim script judges the nominal
    slot, due 5 s before Redis's start, as one "the data does not decide": ``unknown``; the
    slot is never published. An hourly entry with a 30-minute jitter loses every slot of the
    hour before a Redis restart whose offset reaches past it (with 1000 such entries, most of
    them). Where: backends/lua.py ``_CLAIM_BODY`` ``before_restart(slot)`` (the nominal slot,
    not the instant the slot could first be claimed) and the replica's claim (scheduler.py
    sends only the nominal slot; the jitter offset is enforced on the replica only).
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=60), "jitter": 50}}
        beat = Beat(make_app(server.url, schedule), clock, "replica-a")
        beats.append(beat)
        beat.scheduler.setup_schedule()
        beat.run_until(t(63))
        assert slots_of(beat) == [t(0)]

        server.save("snapshot.rdb")  # a restart that loses nothing
        server.crash()
        clock.advance(2)
        server.start_from("snapshot.rdb")
        beat.run_until(t(100))

    reasons = [reason for entry, slot, reason in skips if entry == "e" and slot == t(60)]
    assert t(60) in slots_of(beat), (
        f"10:01:00 (publish instant 10:01:37.6, after Redis's start at 10:01:05) is not "
        f"published: reported {reasons}"
    )


# -- 6. a run queued after the restart waits behind a dropped head: its turn never comes --------


def test_a_run_queued_after_a_redis_restart_is_never_handed_over_once_the_stale_head_is_dropped(
    beats: list[Any],
    workers: list[HandDrivenWorker],
    tmp_path: Path,
    monkeypatch: Any,
    skips: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/singleton.md, ``buffer_all``: "the queued runs follow one another in slot
    order, each published as the previous one ends"; "Hand-over. When a run ends, the release
    script pops the head of the list and, in the same atomic step, sets the marker to the
    head's task id"; "an entry that stops being claimed (``max_runs`` reached, past ``end_at``
    ...) with its runner dead: nothing releases its queue (**a running run's end still hands it
    over normally**)". docs/guarantees.md promise 1: every slot is published or reported.

    Sequence (one beat replica, one worker; ``e`` every 5 s until ``end_at`` 10:00:12,
    ``overlap="buffer_all"``, singleton lease 10 min): R0 of 10:00:00 starts and keeps
    running; 10:00:05 is queued behind it (H1). At 10:00:07 Redis restarts -- saved and back at
    once, nothing lost (or back from a snapshot of that instant). The claim of 10:00:10 (after
    Redis's start) finds R0 running and queues it (H2): queue [H1, H2]. ``e`` has no slot after
    10:00:10. R0 ends at 10:00:20.

    Expected: H1 is dropped (``unknown``, the rule's documented price) and H2 -- claimed and
    queued after Redis's start -- is handed the marker and published as R0 ends. What happens:
    RELEASE pops H1, answers ``unknown``, frees the marker and stops there; the worker records
    H1's skip and asks nothing more. H2 stays queued with no marker and no runner, waiting for
    "the next claim" -- which never comes (past ``end_at``; for a daily entry it comes a day
    later): 10:00:10 is never published, and nothing reports it. Where: backends/lua.py
    ``RELEASE`` (the ``held_before_restart`` branch answers after one head instead of handing
    over the next one) and worker.py ``WorkerHooks`` (the ``unknown`` answer is final).
    """
    sent: list[Any] = []
    monkeypatch.setattr(held_module.CeleryPublisher, "publish", lambda self, o: sent.append(o))
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {
            "e": {
                "task": TASK,
                "schedule": timedelta(seconds=5),
                "overlap": "buffer_all",
                "end_at": t(12).isoformat(),
            }
        }
        app = make_app(server.url, schedule, fork_scheduler_singleton_lease=600)
        beat, worker = beat_with_worker(app, clock, TASK, beats, workers)
        beat.run_until(t(0.5))
        r0_id, r0_headers = beat.headers("e", t(0))
        assert worker.start(r0_id, r0_headers)
        beat.run_until(t(6.5))  # 10:00:05 queued behind R0
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 1

        server.save("snapshot.rdb")  # a restart that loses nothing
        server.crash()
        clock.advance(0.5)
        server.start_from("snapshot.rdb")
        beat.run_until(t(11))  # 10:00:10 queued behind R0: [H1, H2]
        assert client.llen(KEYS.buffered("e")) == 2
        clock.set(t(20))
        worker.end(r0_id)  # R0 ends
        beat.run_until(t(40))
        left = client.llen(KEYS.buffered("e"))

    published = [o.slot for o in [*sent, *beat.publisher.occurrences]]
    reasons = [reason for entry, slot, reason in skips if entry == "e" and slot == t(10)]
    assert t(10) in published, (
        f"10:00:10, queued after Redis's start behind R0, is not handed over when R0 ends "
        f"(published {[s.time().isoformat() for s in published]}, still queued: {left}, "
        f"reported {reasons})"
    )


# -- 7. test 2 on the one-step path: PUBLISH_ONCE refuses the owner's claim, reported claimed -


@pytest.mark.xfail(
    strict=True,
    reason=(
        "documented limit (guarantees.md, Redis loses data): a claim refused at its "
        "one-step publish after a restart is reported claimed, not unknown"
    ),
)
def test_a_claim_refused_by_publish_once_after_a_redis_restart_is_reported_claimed(
    tmp_path: Path, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: as test 2 (docs/guarantees.md promise 1, the row "Redis loses data", and
    docs/events.md's ``claimed``), on the one-step path (docs/guarantees.md, "One step when the
    broker shares the claims' Redis": "a slot it did nothing to is still its unsent claim").

    Sequence (one beat replica A, the only one; Celery's Redis broker on the claims' Redis, so
    ``PUBLISH_ONCE`` fences, pushes and records each claim a claim script did not send itself;
    ``e`` every 5 s with ``overlap="buffer_one"``, whose slots are claimed first and published
    by ``PUBLISH_ONCE``): A wins 10:00:10. Between that claim's reply and its ``PUBLISH_ONCE``,
    Redis restarts -- saved and back at once, nothing lost.

    Expected: 10:00:10 is published, or reported skipped ``unknown`` (WARNING). What happens:
    ``PUBLISH_ONCE`` answers 0 (``claimed_before_restart``), nothing is pushed, and the replica
    reports ``claimed`` at DEBUG ("another replica already handled this slot"); nobody did,
    nothing is recorded. Where: pipeline.py ``Pipeline._report_once`` (a 0 is ``claimed``) with
    backends/lua.py ``_PUBLISH_ONCE_BODY`` (one 0 for "not this replica's" and "brought back by
    a restart").
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        client = redis.Redis.from_url(server.url)
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5), "overlap": "buffer_one"}}
        app = make_app(server.url, schedule)
        app.conf.broker_url = server.url
        backend = RedisBackend.from_url(server.url, read_settings(app.conf))
        backend.replica_id = "replica-a"
        scheduler = Scheduler(
            app,
            clock=clock,
            backend=backend,
            monotonic=lambda: clock.now.timestamp(),
            exit_on_config_error=False,
        )
        try:
            scheduler.setup_schedule()
            while clock() < t(9):
                scheduler.tick()
                clock.advance(0.25)
            client.delete(KEYS.running("e"))  # no worker: the run of 10:00:05 ended
            real = backend.publish_once
            restarted: list[bool] = []

            def publish_once(claims: Any, commands: Any) -> Any:
                if not restarted and any(c.slot == t(10) for c in claims):
                    restarted.append(True)
                    server.save("snapshot.rdb")  # a restart that loses nothing
                    server.crash()
                    clock.advance(1)
                    server.start_from("snapshot.rdb")
                return real(claims, commands)

            backend.publish_once = publish_once  # type: ignore[method-assign]
            while clock() < t(12):
                scheduler.tick()
                clock.advance(0.25)
            assert restarted, "10:00:10 never reached PUBLISH_ONCE"
            pending = client.hexists(KEYS.pending("e"), us(t(10)))
            in_queue = [
                raw for raw in client.lrange("celery", 0, -1) if t(10).isoformat()[:19] in str(raw)
            ]
        finally:
            scheduler.close()

    reasons = [reason for entry, slot, reason in skips if entry == "e" and slot == t(10)]
    assert reasons == ["unknown"], (
        f"10:00:10, A's own claim (pending: {pending}; in the broker's queue: {len(in_queue)}), "
        f"is reported {reasons}"
    )


# -- 8. Redis started with its host clock behind, then stepped: the rule's hour is misplaced ----


@pytest.mark.xfail(
    strict=True,
    reason=(
        "documented limit (guarantees.md, Redis loses data): Redis's start is read from "
        "its uptime on its wall clock; a step of that clock moves it"
    ),
)
def test_a_redis_whose_clock_steps_forward_after_its_start_lets_a_new_replica_win_published_slots(
    beats: list[Any], tmp_path: Path
) -> None:
    """Promise: docs/guarantees.md promise 1 (at most once) and the row "Redis loses data": "No
    duplicates"; Redis "restarted from an older snapshot (RDB) ... no replica may remember the
    later ones (after a whole-cluster restart none does)": "so the claim script itself neither
    wins a slot due in the hour before Redis's start ... For a restart that instant is Redis's
    start time (``INFO server`` uptime)".

    Sequence (``e`` every 5 s, ``catchup="all"``; Redis with RDB): replica A publishes
    10:00:00 ... 10:00:40; Redis's save point fell at 10:00:21. At 10:00:42 the host reboots:
    Redis and A die. Redis comes back from the snapshot at 10:00:45 -- but the host's clock, not
    yet synchronised after the boot, reads 09:59:45 (60 s behind); a second later NTP steps it
    to the right time (10:00:46). Replica B starts then (a whole-cluster restart: it remembers
    nothing) and catches up the entry's missed slots.

    Expected: 10:00:25-10:00:40 (published by A, due in the minute before Redis's start, not in
    the snapshot) are refused ``unknown``; no slot is published twice. What happens: Redis
    counts uptime on its wall clock (``server.unixtime - stat_starttime``), so after the step
    ``started_by()`` puts the start at 09:59:46, a minute before it happened: the rule's window
    ends there, and B wins and publishes 10:00:25, 10:00:30, 10:00:35 and 10:00:40 again (same
    task ids). Where: backends/lua.py ``_STARTED_BY`` (the start as now - uptime, both on Redis's
    wall clock, so a step of that clock after the start moves the start) used by
    ``_CLAIM_BODY``'s ``before_restart``.
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=5), "catchup": "all"}}
        a = Beat(make_app(server.url, schedule), clock, "replica-a")
        beats.append(a)
        a.scheduler.setup_schedule()
        a.run_until(t(21))
        server.save("snapshot.rdb")  # the save point: 10:00:20 the latest published
        a.run_until(t(42))
        assert t(40) in slots_of(a)
        a.scheduler.close()  # the host reboots: A dies with Redis
        server.crash()

        clock.set(t(45))
        server.server.clock_file.set(int(t(-15).timestamp() * 1e6))  # the boot's clock: -60 s
        server.start_from("snapshot.rdb")
        client = redis.Redis.from_url(server.url)
        assert abs(float(client.time()[0]) - t(-15).timestamp()) < 2
        clock.set(t(46))  # NTP steps Redis's clock to the right time (B's clock agrees)

        b = Beat(make_app(server.url, schedule), clock, "replica-b")
        beats.append(b)
        b.scheduler.setup_schedule()
        b.run_until(t(52))

    twice = sorted(set(slots_of(a)) & set(slots_of(b)))
    assert twice == [], (
        f"published by A before the crash and again by B after it: "
        f"{[s.time().isoformat() for s in twice]}"
    )


# -- 9. a backfill of old slots, sent in the hour before the crash, is sent again after it -----


@pytest.mark.xfail(
    strict=True,
    reason=(
        "documented limit (manager.md, backfill): the restart rule covers slots due in "
        "the hour before Redis's start, not a backfill's publish of older ones"
    ),
)
def test_a_backfill_repeated_after_an_rdb_restore_sends_again_old_slots_it_sent_before_the_crash(
    beats: list[Any], tmp_path: Path
) -> None:
    """Promise: docs/manager.md, Backfill: each slot is published "once across the cluster:
    ... two backfills of the same range at once, **a repeated backfill**, or a backfill racing a
    beat replica publish it once"; "Crashes: at most once"; docs/guarantees.md, the row "Redis
    loses data": "No duplicates" for Redis "restarted from an older snapshot (RDB)"; round 53's
    rule gives a backfill ``skipped:unknown`` for "the slots due in the hour before Redis last
    started: it may have come back from a snapshot older than their publish".

    Sequence (``e`` every 60 s, ``catchup="skip"``; Redis with RDB): replica A publishes
    10:00:00, then every replica is down until 13:00 (A comes back and, catch-up off, moves past
    the missed slots: the mark is 13:00). Redis's save point falls at 13:04. At 13:05 an
    operator backfills 10:30-10:32: three slots sent, recorded in the backfill hash and the
    history. At 13:06 Redis crashes and comes back at once from the 2-minute-old snapshot; the
    operator (whose run was cut by the crash) backfills 10:30-10:32 again.

    Expected: nothing is sent again (``already_published``, or ``skipped:unknown``: their
    publish may be lost with the snapshot). What happens: the three slots, due three hours
    before Redis's start, are outside the rule's hour, their backfill record and history items
    went with the snapshot, so BACKFILL_CLAIM answers ``sent`` again: 10:30, 10:31 and 10:32
    are published twice, same task ids. Where: backends/lua.py ``BACKFILL_CLAIM`` (the restart
    check bounds the *slot* by the hour before the start, ``slot > started -
    CLOCKS_DISAGREE_US``, when what a snapshot may have missed is the backfill's *publish*,
    which comes whenever the backfill runs).
    """
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=60), "catchup": "skip"}}
        a = Beat(make_app(server.url, schedule), clock, "replica-a")
        beats.append(a)
        a.scheduler.setup_schedule()
        a.run_until(t(1))
        assert slots_of(a) == [t(0)]
        clock.set(t(3 * 3600 - 1))  # every replica down until 13:00
        a.run_until(t(3 * 3600 + 1))
        assert t(3 * 3600) in slots_of(a)

        clock.set(t(3 * 3600 + 240))  # 13:04
        server.save("snapshot.rdb")
        clock.set(t(3 * 3600 + 300))  # 13:05
        manager = Manager(a.scheduler.app, clock=clock)
        first = manager.backfill("e", t(1800), t(1920), rate=1000)
        assert [r.outcome for r in first] == ["sent", "sent", "sent"]

        clock.set(t(3 * 3600 + 360))  # 13:06
        server.crash()
        server.start_from("snapshot.rdb")
        clock.advance(5)
        again = Manager(a.scheduler.app, clock=clock).backfill("e", t(1800), t(1920), rate=1000)

    sent_twice = [r.slot.time().isoformat() for r in again if r.outcome == "sent"]
    assert sent_twice == [], (
        f"backfilled before the crash and again after it: {sent_twice} "
        f"({[(r.slot.time().isoformat(), r.outcome) for r in again]})"
    )
