"""Adversary round 67: the changes of round 66 (claims that answer again the run their first
answer carried, put-backs with an attempt id, failed publishes that give their run back, the
stored schedule zone, the entries file's repeated keys) and what sits beside them.

Each test's docstring names the promise (with its page), the sequence of events, what was
expected and what happens. Claims are on a real ``redis-server`` (the session's, or one whose
clock is the replicas' fake clock: ``virtual_time_redis``); beat replicas run on a fake clock.
Every test here FAILED on the code it was written against (bfaff89): found failing by round 67;
1-3, 7 and 8 fixed with this file, the others strict xfails (limits documented, or left):

1. a ``buffer_all`` run released by a claim, whose publish failed and was put back at the
   head of the queue, is never sent when the same replica's next claim releases it again
   (``_first_answer`` remembers its task id);
2. a released run whose publish failed and whose put-back meets a Redis blip is lost: not
   kept for the next ticks, not reported;
3. a put-back retried after its reply was lost is applied twice when another replica's
   put-back of the same entry ran in between (``given_back`` keeps only the last attempt
   id): the run is queued and published twice;
4. a ``one_off`` entry whose publish is refused until past the grace is retired by its next
   slot's ``finished`` before ``RECORD_FAILURE`` gives the run back: it never runs;
5. a run released by a claim whose reply was lost is lost, unreported, when a short outage
   makes the catch-up drop that claim's slot (the re-answer never comes);
6. ``update(timezone=None)`` moves a schedule that names the same zone as the entry's
   ``timezone`` to the app's zone;
7. a YAML entries file that overrides a merge key's field (``<<: *anchor``) is refused as a
   key given twice;
8. a released run put back after its marker's lease (the replica counts the lease from
   when the put-back began, not from the claim) runs after the next queued run (code path
   older than round 66, touched by it);
9. a backfill whose claim's replies are all lost (the outage outlasts its retries) leaves a
   slot never sent ``publishing`` for ever: later backfills answer ``skipped:in_flight``.
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
from hand_driven_helpers import RecordingBeat as Beat
from replica_helpers import START, make_scheduler, tick_for
from replica_helpers import make_app as replica_make_app
from restart_helpers import (  # noqa: F401 - the fixtures beats and skips
    KEYS,
    beats_fixture,
    skips_fixture,
    t,
)
from virtual_time_redis import virtual_redis

from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

TASK = "adv67.job"

make_app = partial(restart_helpers.make_app, "adv67", TASK, fork_scheduler_max_retries=0)
#: ``buffer_all_app(url, **conf)``: entry ``e`` every 2 s, ``buffer_all`` (see restart_helpers).
buffer_all_app = partial(restart_helpers.buffer_all_app, "adv67", TASK)


def in_broker(client: redis.Redis) -> list[str]:
    """The slots (hh:mm:ss) of the messages in the broker's ``celery`` queue, sorted."""
    return sorted(
        json.loads(m)["headers"]["fork_scheduler_slot"][11:19]
        for m in client.lrange("celery", 0, -1)
    )


# -- 1. a released run whose publish failed, put back, released again to the same replica -----


def test_a_released_run_put_back_after_a_failed_publish_is_never_sent_when_released_again(
    beats: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    skips: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/singleton.md, ``buffer_all``: "a failed publish (the message goes back to
    the head of the queue)"; "A runner that died ... The next claim of the entry finds the
    marker gone and the queue not empty: it ... pops the head, sets the marker to it and returns
    it to the beat replica, which publishes it ... and **loses none of it**"; the ``held.py``
    docstring of ``HeldRuns.publish`` ("a message that certainly did not leave is held back
    again: at the head of a ``buffer_all`` queue"); docs/guarantees.md promise 1 (no silent
    loss: every unpublished slot reported).

    Sequence (one replica; ``e`` every 2 s, ``overlap="buffer_all"``,
    ``fork_scheduler_singleton_lease=5``; claims and broker on one Redis on the replica's
    clock): 10:00:00 is published and its runner dies (the marker expires at 10:00:05);
    10:00:02 and 10:00:04 are queued. At 10:00:06 the claim releases the head, 10:00:02, and
    its publish is refused by the broker with a non-transient error (the broker Redis at
    ``maxmemory``: ``OOM command not allowed``), once: ``HeldRuns._send`` frees the marker,
    records ``failed`` and pushes the message back at the head of the queue (``[02, 04,
    06]``). At 10:00:08 the same replica's claim finds no marker and releases the head again:
    10:00:02.

    Expected: 10:00:02 is published at that second release (the broker is fine again). What
    happens: ``Scheduler._publish_released`` asks ``_first_answer(task id)``, which remembers
    10:00:02's task id from the first release (only the ``HeldNotSent`` path forgets it), so
    the second release is taken for a repeated answer and dropped: nothing is published,
    nothing reported. The claim set the marker to 10:00:02's task id, so the queue also stalls
    for a whole lease behind a run that does not exist; 10:00:02 is never published (the
    broker ends with 04, 06, ... but no 02), and its only trace is the first ``failed``.
    """
    from celery_fork_scheduler import held as held_module

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        a = Beat(buffer_all_app(server.url), clock, "replica-a")
        beats.append(a)
        a.scheduler.setup_schedule()
        a.run_until(t(5.5))  # 10:00:00 published; 10:00:02, 10:00:04 queued; the marker expired
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 2 and client.get(KEYS.running("e")) is None

        real = held_module.CeleryPublisher
        refusals = [1]

        class RefusedOnce(real):  # type: ignore[misc, valid-type]
            def publish(self, occurrence: Any) -> None:
                if refusals[0]:
                    refusals[0] -= 1
                    raise redis.exceptions.OutOfMemoryError(
                        "command not allowed when used memory > 'maxmemory'."
                    )
                super().publish(occurrence)

        monkeypatch.setattr(held_module, "CeleryPublisher", RefusedOnce)
        a.run_until(t(7))  # 10:00:06 releases 10:00:02: refused, put back at the head
        queue = [json.loads(m)["slot"][11:19] for m in client.lrange(KEYS.buffered("e"), 0, -1)]
        a.run_until(t(40))
        sent = in_broker(client)
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e" and r != "buffered"]
    assert "10:00:02" in sent, (
        f"10:00:02 (put back after its failed publish: queue {queue}) was never published: "
        f"the broker holds {sent}; reported {reported}"
    )


# -- 2. a released run whose publish failed, and whose put-back meets a Redis blip -----------


def test_a_released_run_whose_failed_publish_cannot_be_put_back_is_lost_unreported(
    beats: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    skips: list[tuple[str, datetime, str]],
) -> None:
    """Promise: docs/singleton.md, ``buffer_all``: "a dead worker delays the queue by at most
    one lease plus one interval, and **loses none of it**"; "a failed publish (the message
    goes back to the head of the queue)"; round 66's rule for a released run that Redis keeps
    from being put back (``Scheduler._drop_put_back``: "a released run that cannot be put back
    (Redis stayed away for its marker's lease, or this replica stops first) is reported
    skipped (``redis_unavailable``), never dropped without a word"); docs/guarantees.md promise
    1 (every unpublished slot is **reported**: an ``entry_skipped`` signal, a log line, a
    history item) and promise 5 ("Connection errors are retried").

    Sequence (one replica; ``e`` every 2 s, ``overlap="buffer_all"``,
    ``fork_scheduler_singleton_lease=5``; claims and broker on one Redis on the replica's
    clock): 10:00:00 is published and its runner dies (the marker expires at 10:00:05);
    10:00:02 and 10:00:04 are queued. At 10:00:06 the claim releases the head, 10:00:02. Its
    publish is refused with a non-transient error (``OOM command not allowed``: certainly not
    sent, ``failed``), and a Redis blip of a quarter second begins just then: the put-back
    that ``HeldRuns._send`` runs next (``GIVE_BACK_HELD``) is refused before it is sent
    (``ConnectionError``). Redis answers again from the next tick on.

    Expected: the run is put back once Redis answers (as a put-back refused after
    ``HeldNotSent`` is: kept in ``_to_put_back`` and tried at the next ticks within the
    marker's lease) and published, or at least reported skipped ``redis_unavailable``. What
    happens: the put-back's ``ConnectionError`` escapes ``HeldRuns._send`` to
    ``Scheduler._publish_released``'s last ``except Exception``, which only logs "could not
    send the queued run of e"; nothing keeps the message, nothing retries. 10:00:02 is never
    published, no ``entry_skipped``, no history item of it at all (the ``failed`` item was to
    be written by the refused script), and once its marker expires the queue goes on from
    10:00:04.
    """
    from test_adversary_round60 import CutOff

    from celery_fork_scheduler import held as held_module

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        a = Beat(buffer_all_app(server.url), clock, "replica-a")
        beats.append(a)
        cut = CutOff(a)
        a.scheduler.setup_schedule()
        a.run_until(t(5.5))  # 10:00:00 published; 10:00:02, 10:00:04 queued; the marker expired
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 2 and client.get(KEYS.running("e")) is None

        real = held_module.CeleryPublisher

        class RefusedInABlip(real):  # type: ignore[misc, valid-type]
            def publish(self, occurrence: Any) -> None:
                if occurrence.slot == t(2) and not cut.on:
                    cut.on = True  # the blip begins with the refusal
                    raise redis.exceptions.OutOfMemoryError(
                        "command not allowed when used memory > 'maxmemory'."
                    )
                super().publish(occurrence)

        monkeypatch.setattr(held_module, "CeleryPublisher", RefusedInABlip)
        a.run_until(t(6.25))  # 10:00:06 releases 10:00:02: refused, its put-back refused too
        cut.on = False
        monkeypatch.setattr(held_module, "CeleryPublisher", real)
        a.run_until(t(40))
        sent = in_broker(client)
        history = [json.loads(h) for h in client.lrange(KEYS.history("e"), 0, -1)]
    slot_02 = int(t(2).timestamp() * 1_000_000)
    recorded = [h["outcome"] for h in history if int(h["slot"]) == slot_02]
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e" and r != "buffered"]
    assert "10:00:02" in sent or any(s == "10:00:02" for s, _ in reported), (
        f"10:00:02 (released; its publish refused, its put-back refused by a Redis blip) was "
        f"neither published nor reported: the broker holds {sent}; reported {reported}; its "
        f"history {recorded}"
    )


# -- 3. two replicas' put-backs of one run, the first one's reply lost -------------------------


def run_both(first: Any, second: Any, until: datetime, step: float = 0.25) -> None:
    """Tick ``first`` then ``second`` every ``step`` seconds of their shared clock."""
    clock = first.clock
    while clock() < until:
        first.scheduler.tick()
        second.scheduler.tick()
        clock.advance(step)
    first.scheduler.tick()
    second.scheduler.tick()


def test_a_put_back_retried_after_another_replicas_put_back_is_applied_twice(
    beats: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: docs/guarantees.md promise 1 ("each slot of each entry is published at most
    once", "whenever any of them is paused, stopped or killed"); docs/singleton.md,
    ``buffer_all``, "A runner that died": "When Redis keeps that run from leaving ..., the
    replica puts it back at the head of the queue ..., and the next claim releases it again";
    round 66's ``GIVE_BACK_HELD`` attempt id ("a put-back retried after a lost reply is
    applied once").

    Sequence (replicas A and B; ``e`` every 2 s, ``overlap="buffer_all"``,
    ``fork_scheduler_max_concurrent=10``, ``fork_scheduler_singleton_lease=5``; claims and
    broker on one Redis on the replicas' clock): 10:00:00 runs and its runner dies (marker
    expires at 10:00:05); 10:00:02 and 10:00:04 are queued. At 10:00:06 A's claim releases
    the head, 10:00:02; a blip between A and Redis: its cap place cannot be taken
    (``HeldNotSent``) and the put-back is refused. At A's next tick (10:00:06.25) the put-back
    (attempt ``a1``) runs in Redis -- 10:00:02 back at the head, marker freed, ``given_back =
    a1`` -- and its reply is lost; then A stalls for two seconds (a GC pause). At 10:00:08 B's
    claim releases the head, 10:00:02 again; B meets the same kind of blip (cap place,
    put-back refused) and at its next tick puts it back (attempt ``b1``: ``given_back = b1``).
    A resumes at 10:00:08.5 and retries its put-back, ``a1``, as it should (its outcome is
    unknown to A).

    Expected: ``a1`` was applied already, so the retry does nothing; 10:00:02 is queued once
    and published once. What happens: ``GIVE_BACK_HELD`` remembers only the *last* attempt id
    in the state hash (``given_back``), which B's put-back overwrote: A's retry is applied a
    second time and 10:00:02 is queued twice (``[02, 02, 04, 06, 08]``, its run given back
    twice); the next claims release both copies, and 10:00:02 reaches the broker twice with
    the same task id.
    """
    from test_adversary_round60 import CutOff

    from celery_fork_scheduler import held as held_module

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        a = Beat(buffer_all_app(server.url, fork_scheduler_max_concurrent=10), clock, "replica-a")
        b = Beat(buffer_all_app(server.url, fork_scheduler_max_concurrent=10), clock, "replica-b")
        beats.extend([a, b])
        cuts = {"a": CutOff(a), "b": CutOff(b)}
        a.scheduler.setup_schedule()
        b.scheduler.setup_schedule()
        run_both(a, b, t(5.5))  # 10:00:00 published; 10:00:02, 10:00:04 queued; marker expired
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 2 and client.get(KEYS.running("e")) is None

        def blip_during_hand_over(beat: Any, cut: CutOff) -> None:
            publish_released = beat.scheduler._publish_released

            def blipped(result: Any) -> None:
                cut.on = True  # the cap place cannot be taken, nor the run put back
                try:
                    publish_released(result)
                finally:
                    cut.on = False
                    monkeypatch.setattr(beat.scheduler, "_publish_released", publish_released)

            monkeypatch.setattr(beat.scheduler, "_publish_released", blipped)

        blip_during_hand_over(a, cuts["a"])
        blip_during_hand_over(b, cuts["b"])
        real_give_back = held_module.HeldRuns.give_back
        a_client = a.scheduler.backend.client
        a_calls = [0]

        def give_back(self: Any, *args: Any, **kwargs: Any) -> None:
            if self.client is a_client:
                a_calls[0] += 1
                if a_calls[0] == 2:  # A's put-back at its next tick runs; its reply is lost
                    self.client.ping()
                    cuts["a"].replies_lost = True
            try:
                real_give_back(self, *args, **kwargs)
            finally:
                cuts["a"].replies_lost = False

        monkeypatch.setattr(held_module.HeldRuns, "give_back", give_back)
        run_both(a, b, t(6.25))  # A: 10:00:02 released, not sent; put back, the reply lost
        b.run_until(t(8.25))  # A stalls; B: 10:00:02 released again, not sent; put back (b1)
        run_both(a, b, t(8.5))  # A resumes: its put-back retried
        queue = [json.loads(m)["slot"][11:19] for m in client.lrange(KEYS.buffered("e"), 0, -1)]
        run_both(a, b, t(12))
        run_both(b, a, t(40))
        sent = [
            json.loads(m)["headers"]["fork_scheduler_slot"][11:19]
            for m in client.lrange("celery", 0, -1)
        ]
    twice = sorted({s for s in sent if sent.count(s) > 1})
    assert twice == [], (
        f"published twice: {twice} (the broker holds {sorted(sent)}; the queue after A's "
        f"put-back was retried: {queue})"
    )


# -- 4. a one-off entry whose publish is refused while its next slot falls due ------------------


class DownPublisher(RecordingPublisher):
    """Records what it publishes; while ``down``, the broker refuses each send (the connection
    is made: ``prepare`` works, the publish raises before anything left)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def publish(self, occurrence: Any) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "broker down")
        super().publish(occurrence)


@pytest.mark.xfail(
    reason=(
        "documented limit (docs/schedules.md, max_runs): a slot decided while an earlier "
        "slot's publish is still retried counts that run"
    ),
    strict=True,
)
def test_a_one_off_entry_whose_publish_is_refused_is_retired_by_its_next_slot(
    redis_url: str, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/schedules.md, ``max_runs``: "the entry stops after this many runs ... (a
    slot whose publish failed, recorded ``failed``, is no run: it does not count)"; ``one_off``:
    "one run, then done"; docs/guarantees.md, failure table, "A publish is refused before
    anything was sent": "tried again one second later ... while the slot is within the grace
    ... When it gives up, the failure is recorded and the claim closed; ... (no run of it
    exists)"; round 66 (``RECORD_FAILURE`` gives the run back: "a one-off entry whose one
    publish failed runs at its next slot").

    Sequence (one replica; ``e`` every 2 s, ``one_off=True``; the session's Redis): the slot
    10:00:02 is won (``runs`` 1). The broker refuses every send (``ConnectionRefusedError``,
    nothing left) until 10:00:12: the replica asks again every second and gives up past the
    catch-up grace (5 s), recording 10:00:02 ``failed`` -- which now gives its run back. But
    meanwhile the entry's next slot, 10:00:04, fell due while the run of 10:00:02 still
    counted: its claim answered ``finished`` (recorded ``skipped:finished``), and the replica
    retired the entry. The broker is back at 10:00:12; the replica runs on to 10:00:40.

    Expected: nothing of the entry ran, so its one run is still owed and a later slot runs
    (as the same outage with a 30 s interval does since round 66). What happens: the entry
    was retired on ``finished`` before the failure gave the run back; no replica claims it
    again (``runs`` is 0, yet it stays finished: a runtime entry would be removed), and the
    one-off job never runs. Whether it ever runs depends on whether its next slot falls within
    the publish's retries.
    """
    definition = {"task": TASK, "schedule": timedelta(seconds=2), "one_off": True}
    clock = FakeClock(START)
    publisher = DownPublisher()
    app = replica_make_app(redis_url, {"e": definition})
    scheduler = make_scheduler(redis_url, clock, app=app, publisher=publisher)
    client = redis.Redis.from_url(redis_url)
    try:
        tick_for(scheduler.tick, clock, 11.7)  # 10:00:02 won, refused; 10:00:04: finished
        runs = client.hget(KEYS.state("e"), "runs")
        publisher.down = False
        tick_for(scheduler.tick, clock, 28)
    finally:
        scheduler.close()
    sent = [o.slot.time().isoformat() for o in publisher.occurrences]
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e"]
    assert sent, (
        f"the one-off entry never ran: runs={runs!r} once its only publish was recorded failed; "
        f"reported {reported}"
    )


# -- 5. a released run whose claim's reply was lost, and a short outage ------------------------


@pytest.mark.xfail(
    reason=(
        "not fixed: a claim slot dropped by catchup latest after an outage is not asked "
        "again, so its lost answer's released run is not carried again (left for the next"
        " session)"
    ),
    strict=True,
)
def test_a_run_released_by_a_lost_claim_reply_is_lost_unreported_after_an_outage(
    beats: list[Any], tmp_path: Path, skips: list[tuple[str, datetime, str]]
) -> None:
    """Promise: docs/singleton.md, ``buffer_all``, "A runner that died": the claim "pops the
    head, sets the marker to it and returns it to the beat replica, which publishes it ...
    and **loses none of it**"; docs/guarantees.md promise 1 ("each of them is **reported** (an
    ``entry_skipped`` signal with its reason, a log line, a history item)"), and, for a claim
    whose every attempt lost its reply, "its slots are left to the outage's catch-up rules
    ...; one the rules drop is reported ``redis_unavailable``"; round 66's re-answer ("a run
    the first answer carried (a queue's head it released ...) is carried again; the replica
    acts on it once").

    Sequence (one replica; ``e`` every 2 s, ``overlap="buffer_all"``,
    ``fork_scheduler_singleton_lease=30``, ``fork_scheduler_max_retries=0``; claims and
    broker on one Redis on the replica's clock): 10:00:00 is published and its runner dies
    (the marker expires at 10:00:30); 10:00:02 ... 10:00:30 are queued. The claim of
    10:00:32 runs in Redis -- it queues 10:00:32, pops the head 10:00:02 and sets the marker
    to its task id for 30 s -- and its reply is lost: the network between the replica and
    Redis goes down just then, for 2.5 s (within the catch-up grace, 5 s, and well within
    the marker's lease). The replica runs on to 10:01:30.

    Expected: 10:00:02 -- whose message existed only in the lost reply, and whose marker
    still names it when Redis answers again -- is published then (round 66's re-answer), or
    at least reported skipped. What happens: the outage's catch-up (``catchup="latest"``)
    drops the slot 10:00:32 in favour of 10:00:34 (reported ``redis_unavailable``, though
    its claim queued it and it is published later), so the claim of 10:00:32 is never asked
    again and its re-answer never comes. 10:00:02 is never published and never reported: no
    ``entry_skipped``, no log line, no history item says it was dropped; its marker blocks
    the queue for the rest of the lease, and the queue then goes on from 10:00:04.
    """
    from lane_helpers import lose_next_reply
    from test_adversary_round60 import CutOff

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        a = Beat(buffer_all_app(server.url, fork_scheduler_singleton_lease=30), clock, "replica-a")
        beats.append(a)
        cut = CutOff(a)
        a.scheduler.setup_schedule()
        a.run_until(t(31.5))  # 10:00:00 published; 10:00:02 ... 10:00:30 queued
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 15 and client.get(KEYS.running("e")) is None
        lose_next_reply(a.scheduler, "claim_and_send")  # the claim of 10:00:32: reply lost
        a.run_until(t(32))
        assert client.get(KEYS.running("e")) is not None  # (the claim ran: 10:00:02 released)
        cut.on = True  # the network stays down for 2.5 s
        a.run_until(t(34.5))
        cut.on = False
        a.run_until(t(90))
        sent = in_broker(client)
        history = [json.loads(h) for h in client.lrange(KEYS.history("e"), 0, -1)]
    slot_02 = int(t(2).timestamp() * 1_000_000)
    recorded = [h["outcome"] for h in history if int(h["slot"]) == slot_02]
    reported = [(s.time().isoformat(), r) for n, s, r in skips if n == "e" and r != "buffered"]
    assert "10:00:02" in sent or any(s == "10:00:02" for s, _ in reported), (
        f"10:00:02 (released by the claim whose reply was lost) was neither published nor "
        f"reported: the broker holds {sent[:4]}...; reported {reported}; its history {recorded}"
    )


# -- 6. a schedule that names the zone its entry's timezone names too --------------------------


@pytest.mark.xfail(
    reason=(
        "documented limit (docs/manager.md): a schedule naming the same zone as the "
        "entry's key is read as the form stored before 2026-12-04"
    ),
    strict=True,
)
def test_dropping_the_timezone_moves_a_schedule_that_names_the_same_zone_to_the_apps(
    redis_url: str,
) -> None:
    """Promise: docs/manager.md, ``update``: "``timezone=None`` drops the entry's own zone: a
    schedule that names its own zone (``"daily at 10:30 in Europe/Berlin"``) is read in that
    zone again, any other (and the exclusion dates) in the app's ``timezone``"; the
    ``Entry.schedule_zone`` field of round 66 ("the zone the schedule names itself ...
    stored with the schedule: dropping ``timezone`` later gives it back").

    Sequence (app ``timezone`` UTC): ``manager.add("e", TASK, "daily at 10:30 in
    Asia/Tokyo")`` -- the schedule names its zone; later ``manager.update("e",
    timezone="Asia/Tokyo")`` (an own zone for the entry's exclusion dates, the same as the
    schedule's), and later still ``manager.update("e", timezone=None)``.

    Expected: the schedule names Asia/Tokyo itself, so it is read in Asia/Tokyo again: 10:30
    in Tokyo, ``next_run`` at 01:30 UTC (as it is when the entry's zone was any other one,
    say Europe/Paris). What happens: the stored schedule keeps ``"tz": "Asia/Tokyo"`` (its
    ``schedule_zone``), and ``_without_zone`` (manager.py) drops a stored ``tz`` equal to
    the entry's ``timezone`` -- the rule for the form stored before round 66, where the
    entry's zone was written into the schedule -- so the schedule the operator wrote in
    Tokyo runs at 10:30 UTC, nine hours late, with no error.
    """
    from celery_fork_scheduler import Manager

    app = replica_make_app(redis_url, {})
    manager = Manager(app)
    results = {}
    for zone in ("Europe/Paris", "Asia/Tokyo"):
        name = f"e-{zone.split('/')[1].lower()}"
        manager.add(name, TASK, "daily at 10:30 in Asia/Tokyo")
        manager.update(name, timezone=zone)
        manager.update(name, timezone=None)
        job = manager.get(name)
        next_run = job.next_run.astimezone(timezone.utc).time().isoformat()
        results[zone] = (str(getattr(job.schedule, "tz", None)), next_run)
    assert results["Asia/Tokyo"] == results["Europe/Paris"], (
        f"after timezone=Asia/Tokyo then timezone=None, 'daily at 10:30 in Asia/Tokyo' is read "
        f"as {results['Asia/Tokyo']} (zone, next run UTC); after timezone=Europe/Paris then "
        f"None: {results['Europe/Paris']}"
    )


# -- 7. a YAML entries file that shares fields through a merge key -----------------------------


def test_a_yaml_entries_file_overriding_a_merged_key_is_refused_as_a_repeated_key(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: docs/cli.md, ``add --file``: "A ``.yaml``/``.yml`` file is read as YAML"; "A
    key given twice in one object (a name twice in the object form, a field twice in an
    entry) is refused ...: JSON and YAML parsers would keep the last silently". YAML's merge
    key (``<<: *anchor``, supported by PyYAML's ``safe_load``, which read these files before
    round 66) copies the anchored mapping's keys into an object *unless the object gives them
    itself*: an explicit key overriding a merged one is not a key given twice, and no parser
    keeps anything "silently" there -- it is the merge's defined meaning.

    Sequence: ``celery schedule add --file entries.yaml`` with two entries, the second
    sharing the first's fields through a merge key and giving its own ``name`` and ``args``
    (the usual way to write a family of similar entries in YAML)::

        - &nightly
          name: report-eu
          task: tasks.cleanup
          schedule: "daily at 02:00"
          args: [eu]
        - <<: *nightly
          name: report-us
          args: [us]

    Expected: both entries are added (``report-us`` with ``args: [us]``), as before round
    66. What happens: the new loader (``cli/entries_file.py`` ``_loader``) flattens the
    merge into the object's pairs and ``_keyed`` counts the merged ``name`` and the entry's
    own ``name`` as one key given twice: exit 2, "entry 'report-us', field 'name': is given
    more than once", nothing added.
    """
    from app_helpers import two_task_app
    from celery.bin.base import CLIContext
    from click.testing import CliRunner

    from celery_fork_scheduler.cli import schedule as schedule_command

    pytest.importorskip("yaml")
    app = two_task_app("round67", redis_url, fork_scheduler_redis_url=redis_url)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "entries.yaml").write_text(
        "- &nightly\n"
        "  name: report-eu\n"
        "  task: tasks.cleanup\n"
        '  schedule: "daily at 02:00"\n'
        "  args: [eu]\n"
        "- <<: *nightly\n"
        "  name: report-us\n"
        "  args: [us]\n",
        encoding="utf-8",
    )
    obj = CLIContext(app=app, no_color=True, workdir=None)
    result = CliRunner().invoke(schedule_command, ["add", "--file", "entries.yaml"], obj=obj)
    client = redis.Redis.from_url(redis_url)
    stored = {n.decode(): json.loads(v) for n, v in client.hgetall(KEYS.runtime_entries).items()}
    app.close()
    assert result.exit_code == 0 and stored.get("report-us", {}).get("args") == ["us"], (
        f"exit {result.exit_code}: {result.output.strip()!r}; stored {sorted(stored)}"
    )


# -- 8. a released run put back after its marker's lease ---------------------------------------


def test_a_released_run_put_back_after_its_marker_expired_runs_after_the_next_one(
    beats: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: docs/singleton.md, ``buffer_all``: "every such slot is queued ...; the queued
    runs follow one another **in slot order**"; "A runner that died": "When Redis keeps that
    run from leaving (confirming the hand-over or taking its place under the cap fails), the
    replica puts it back at the head of the queue (at its next ticks while Redis is away,
    **within the marker's lease**), and the next claim releases it again"; round 66's rule
    that a released run not put back before its lease ends is reported ``redis_unavailable``.

    Sequence (replicas A and B; ``e`` every 2 s, ``overlap="buffer_all"``,
    ``fork_scheduler_max_concurrent=10``, ``fork_scheduler_singleton_lease=5``; claims and
    broker on one Redis on the replicas' clock): 10:00:00 runs and its runner dies (marker
    expires at 10:00:05); 10:00:02 and 10:00:04 are queued. At 10:00:06 A's claim releases
    the head, 10:00:02 (its marker until 10:00:11). A network fault between A and Redis
    begins: taking the cap place hangs for its 2 s timeout and fails (``HeldNotSent``, at
    10:00:08), and A's put-backs are refused until 10:00:12. Meanwhile the marker of
    10:00:02 expires (10:00:11) and B's claim of 10:00:12 releases the next head, 10:00:04,
    and publishes it. At 10:00:12.25 A reaches Redis again and puts 10:00:02 back -- its own
    "lease" runs from when the cap call failed (10:00:08 + 5 s), not from the claim that set
    the marker (10:00:06 + 5 s).

    Expected: once the marker's lease is over the replica no longer puts the run back (it is
    reported ``redis_unavailable``), or the queue keeps slot order. What happens: 10:00:02 is
    pushed back at the head of the queue *after* 10:00:04 was handed the marker and published:
    it is released at 10:00:18 and published after 10:00:04 -- the queued runs no longer
    follow one another in slot order (10:00:04 runs before 10:00:02).
    """
    from test_adversary_round60 import CutOff

    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(-1))
        a = Beat(buffer_all_app(server.url, fork_scheduler_max_concurrent=10), clock, "replica-a")
        b = Beat(buffer_all_app(server.url, fork_scheduler_max_concurrent=10), clock, "replica-b")
        beats.extend([a, b])
        cut = CutOff(a)
        a.scheduler.setup_schedule()
        b.scheduler.setup_schedule()
        run_both(a, b, t(5.5))  # 10:00:00 published; 10:00:02, 10:00:04 queued; marker expired
        client = redis.Redis.from_url(server.url)
        assert client.llen(KEYS.buffered("e")) == 2 and client.get(KEYS.running("e")) is None
        publish_released = a.scheduler._publish_released

        def hangs_then_fails(result: Any) -> None:
            cut.on = True
            clock.advance(2)  # the cap call waits for its timeout, then fails
            monkeypatch.setattr(a.scheduler, "_publish_released", publish_released)
            publish_released(result)

        monkeypatch.setattr(a.scheduler, "_publish_released", hangs_then_fails)
        run_both(a, b, t(12))  # A cut off from 10:00:06 on; B releases 10:00:04 at 10:00:12
        cut.on = False
        run_both(a, b, t(40))
        order = [
            json.loads(m)["headers"]["fork_scheduler_slot"][11:19]
            for m in reversed(client.lrange("celery", 0, -1))
        ]
    assert order == sorted(order), f"published in this order: {order}"


# -- 9. a backfill whose claim's replies are all lost ------------------------------------------


@pytest.mark.xfail(
    reason=(
        "documented limit (docs/manager.md, Crashes): a backfill whose every claim retry "
        "lost its reply leaves the slot in flight"
    ),
    strict=True,
)
def test_a_backfill_whose_claim_replies_are_all_lost_leaves_a_never_sent_slot_in_flight(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: docs/manager.md, Backfill: it "publishes each slot ... that was **never
    published**"; "Crashes: at most once": the one case left ``publishing`` for ever is "A
    backfill **killed** between the two" (claim and record); round 66: "A claim whose reply is
    lost (a connection error) is asked again by the same backfill
    (``fork_scheduler_max_retries``, ``fork_scheduler_retry_delay`` apart), and the slot it
    marked is that backfill's again: nothing was published yet"; promise 5 ("Connection
    errors are retried; any Redis failure ... never crashes or hangs").

    Sequence: a static entry every 30 s whose high-water mark is past 10:00:30 (the slot was
    missed). ``manager.backfill("e", 10:00:30, 10:00:30, force=True)`` with
    ``fork_scheduler_max_retries=1``: its ``BACKFILL_CLAIM`` runs in Redis (the slot is marked
    ``publishing|<backfill id>``) and its reply is lost, and so is the reply of the one retry
    (the network between the Manager's host and Redis drops answers for a few seconds). The
    backfill raises ``TimeoutError`` before any publish. The operator runs the same backfill
    again once the network is back.

    Expected: nothing was ever sent, so the repeated backfill sends the slot (or the failed
    one leaves the slot unmarked). What happens: the slot stays ``publishing|<first backfill
    id>`` for ever; every later backfill, ``force`` or not, answers ``skipped:in_flight`` ("the
    message may have left") for a slot whose message never existed -- as before round 66,
    whenever the outage outlasts the retries.
    """
    from celery_fork_scheduler import Manager
    from celery_fork_scheduler import backfill as backfill_module
    from celery_fork_scheduler.backends.lua import BACKFILL_CLAIM

    app = replica_make_app(
        redis_url,
        {"e": {"task": TASK, "schedule": 30.0}},
        fork_scheduler_max_retries=1,
        fork_scheduler_retry_delay=0.01,
    )
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
                self.disconnect()
                raise redis.TimeoutError("the answer was lost (test partition)")
            return response

    pool.connection_class = RepliesLost
    pool.reset()
    managers_client.ping()
    real_decide = backfill_module._Run.decide

    def decide(self: Any, *args: Any, **kwargs: Any) -> Any:
        lost[0] = True  # every answer of this claim is lost
        try:
            return real_decide(self, *args, **kwargs)
        finally:
            lost[0] = False

    monkeypatch.setattr(backfill_module._Run, "decide", decide)
    try:
        first: Any = [r.outcome for r in manager.backfill("e", slot, slot, force=True)]
    except Exception as exc:
        first = f"raised {type(exc).__name__}"
    monkeypatch.setattr(backfill_module._Run, "decide", real_decide)
    second = [r.outcome for r in manager.backfill("e", slot, slot, force=True)]
    marks = {k.decode(): v.decode() for k, v in client.hgetall(KEYS.backfill("e")).items()}
    assert ["sent"] in (first, second), (
        f"first backfill: {first}; the same backfill again: {second} "
        f"(P{{e}}:backfill = {marks}): nothing was ever sent"
    )
