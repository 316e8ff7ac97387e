"""Adversarial review of HEAD (after the 17 fixes of 3faf3d9..HEAD): reproductions that FAIL.

Each test names, in its docstring, the promise of docs/guarantees.md it breaks and the two
ordinary events that meet. Every part is real (redis-server, the Lua scripts, ``Scheduler``,
``Manager``); only the scheduler's clock is a FakeClock (slot maths), with claim leases and
Redis ``TIME`` real where they matter (polled in real time, with generous bounds).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from replica_helpers import fired, make_app, make_scheduler, run_for

from celery_fork_scheduler import Manager, Scheduler, every, signals
from celery_fork_scheduler.backends import Claim, ClaimOutcome
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import Settings, read_settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher, RedisServer


def at(text: str) -> datetime:
    return datetime.fromisoformat(f"2026-03-02T{text}+00:00")


def run_real_time(schedulers: list[Scheduler], clock: FakeClock, seconds: float) -> None:
    """Tick in real time (claim leases run on Redis TIME), the fake clock following."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        clock.advance(0.05)
        for scheduler in schedulers:
            scheduler.tick()


@pytest.fixture
def reported() -> Iterator[list[tuple[str, str, datetime, str]]]:
    """Every entry_skipped / entry_failed signal: (kind, entry, slot, reason)."""
    seen: list[tuple[str, str, datetime, str]] = []

    def on_skip(sender: Any = None, entry: str = "", slot: Any = None, reason: str = "", **_: Any):
        seen.append(("skipped", entry, slot, reason))

    def on_fail(sender: Any = None, entry: str = "", slot: Any = None, **_: Any):
        seen.append(("failed", entry, slot, "error"))

    signals.entry_skipped.connect(on_skip, weak=False)
    signals.entry_failed.connect(on_fail, weak=False)
    yield seen
    signals.entry_skipped.disconnect(on_skip)
    signals.entry_failed.disconnect(on_fail)


# -- 1. max_runs raised again ----------------------------------------------------------------


def test_raising_max_runs_of_a_finished_static_entry_brings_it_back(
    redis_url: str, clock: FakeClock, reported: list[Any]
) -> None:
    """Promise (failure table, "An entry uses up max_runs"): "Raising max_runs brings it back."

    Events: a static entry finishes (max_runs=1, `finished` recorded in its state hash), then
    a rolling deploy raises its max_runs to 3. Every starting replica reads the marks at
    start-up; `HighWaterMark.finished` is true whenever the `finished` field exists, whatever
    max_runs it was recorded under, and `_catch_up_batch` retires the entry before any claim
    could clear the field. The entry never fires again, on any replica, and nothing says so
    (no entry_skipped): a silent loss of every later slot.
    """
    first = RecordingPublisher()
    job = {"task": "job", "schedule": every(10).seconds}
    a = make_scheduler(redis_url, clock, {"job": {**job, "max_runs": 1}}, publisher=first)
    a.setup_schedule()
    run_for(a, clock, 25)  # 10:00:10 fires, 10:00:20 answers `finished`
    a.close()
    assert fired(first) == {("job", at("10:00:10").isoformat()): 1}

    second = RecordingPublisher()
    b = make_scheduler(
        redis_url, clock, {"job": {**job, "max_runs": 3}}, publisher=second, replica_id="replica-b"
    )
    try:
        b.setup_schedule()
        run_for(b, clock, 20)  # 10:00:30 and 10:00:40 are due; runs 1 of 3 used
        assert fired(second) == {
            ("job", at("10:00:30").isoformat()): 1,
            ("job", at("10:00:40").isoformat()): 1,
        }, f"max_runs raised to 3, yet nothing fired; reports: {reported}"
    finally:
        b.close()


# -- 2. the last run's claimer dies, the next slot answers `finished` -------------------------


def test_the_last_run_of_a_max_runs_entry_is_taken_over_when_its_claimer_dies(
    redis_url: str, clock: FakeClock, reported: list[Any]
) -> None:
    """Promise 4 (no silent loss) / failure-table row "A replica dies after winning a claim
    and before publishing": another replica takes the slot over after the lease.

    Events: the replica that won the LAST allowed run (max_runs=2) dies before publishing
    it, and the entry's next slot comes due during the claim lease. The surviving replica got
    `pending` for the orphaned slot and queued a takeover retry; its claim of the next slot
    answers `finished`, `_retire` adds the entry to `_finished`, and `_work_for` then drops
    the takeover retry (``name in self._finished``). The run counted against max_runs is
    never published and never reported. (Same root cause at start-up: `_catch_up_batch`
    retires a finished entry before queueing its unsent claims.)
    """
    schedule = {"job": {"task": "job", "schedule": every(2).seconds, "max_runs": 2}}
    publisher = RecordingPublisher()
    b = make_scheduler(
        redis_url,
        clock,
        schedule,
        publisher=publisher,
        replica_id="survivor",
        fork_scheduler_claim_lease=3.0,
    )
    dead = RedisBackend.from_url(redis_url, read_settings(make_app(redis_url, schedule).conf))
    dead.replica_id = "dies-before-publishing"
    orphan = at("10:00:04")
    try:
        b.setup_schedule()
        run_for(b, clock, 2)  # 10:00:02 fires (run 1 of 2)
        assert fired(publisher) == {("job", at("10:00:02").isoformat()): 1}
        # The other replica wins run 2 (slot 10:00:04) and is killed before its fence.
        won = dead.claim([Claim("job", orphan, task_id_for("job", orphan), max_runs=2)])
        assert won[0].outcome is ClaimOutcome.WON
        clock.set(at("10:00:04.300"))
        b.tick()  # the survivor gets `pending` (3 s lease) and queues a takeover retry
        # 10:00:06 answers `finished` (runs 2 of 2) within the lease; then the lease runs out.
        # (polled: on a loaded host the fake clock, 50 ms a tick, lags the real lease)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            ("job", orphan.isoformat()) in fired(publisher)
            or any(r[1] == "job" and r[2] == orphan for r in reported)
        ):
            run_real_time([b], clock, 0.5)
        reported_orphan = [r for r in reported if r[1] == "job" and r[2] == orphan]
        assert ("job", orphan.isoformat()) in fired(publisher) or reported_orphan, (
            "the orphaned last run was neither taken over nor reported; "
            f"fired {dict(fired(publisher))}, reports {reported}"
        )
    finally:
        dead.close()
        b.close()


# -- 3. `since` of a runtime entry, loaded at start-up ----------------------------------------


def test_the_promised_next_run_fires_when_the_replica_loads_the_entry_at_start_up(
    redis_url: str, clock: FakeClock, reported: list[Any]
) -> None:
    """Promise (failure table, "A runtime entry is added"): "every replica schedules the entry
    from its first slot after that instant: what add and update answer as next_run fires, even
    if a replica loads the change after it."

    Events: `Manager.add` answers next_run 10:00:10 while the only replica is being restarted
    (a rolling deploy), and the replica comes back at 10:00:11 — within the 5 s catch-up
    grace. `RuntimeEntries.load` records `since` but `setup_schedule` never uses it: the entry
    is queued from *now*, and the promised slot neither fires nor is reported.
    """
    manager = Manager(make_app(redis_url, {}), clock=clock)
    job = manager.add("job", "reports.job", every(10).seconds)
    assert job.next_run == at("10:00:10")
    clock.advance(11)  # the replica restarts across the promised slot

    publisher = RecordingPublisher()
    replica = make_scheduler(redis_url, clock, {}, publisher=publisher)
    try:
        replica.setup_schedule()
        replica.tick()
        run_for(replica, clock, 3)  # still within the grace of 10:00:10
        assert ("job", at("10:00:10").isoformat()) in fired(publisher), (
            f"promised next_run never fired; fired {dict(fired(publisher))}, reports {reported}"
        )
    finally:
        replica.close()


# -- 4. a Redis restart and a replica that never saw the entry claimed ------------------------


def test_a_redis_restart_right_after_an_entrys_first_publish_gives_no_duplicate(
    clock: FakeClock,
) -> None:
    """Promise 1 (once per slot) and the failure-table row "Redis loses data": "No
    duplicates"; the first claim that finds the mark missing writes it back, raised to the
    instant the data was lost.

    Events: replica A wins and publishes the first slot of an entry (new entry, or a rare
    schedule's first fire); Redis restarts without persistence; replica B, a few milliseconds
    behind A, then claims the same slot. The write-back only happens when the claimant sends
    a known mark (``known > 0``): B never saw the entry claimed, so the script skips the
    restore (and its INFO-uptime bound) and B wins a slot A already published.
    """
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    settings = Settings(max_retries=20)
    a, b = RedisBackend.from_url(server.url, settings), RedisBackend.from_url(server.url, settings)
    a.replica_id, b.replica_id = "replica-a", "replica-b"
    try:
        # Slots on Redis's own clock, seconds after its start (a fresh server refuses the
        # slots of its first seconds: they could have been claimed before it started).
        deadline = time.monotonic() + 10
        while int(client.info("server")["uptime_in_seconds"]) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        slot = a.server_time() - timedelta(milliseconds=100)
        first = Claim("job", slot, task_id_for("job", slot))
        assert [r.outcome for r in a.claim([first])] == [ClaimOutcome.WON]
        a.begin_publish([first])
        a.mark_sent([first])  # A published the entry's first slot
        server.stop()
        server.start()  # restart, empty
        # B, a moment behind A, never saw the entry claimed (no known mark).
        assert [r.outcome for r in b.claim([first])] == [ClaimOutcome.CLAIMED]
    finally:
        a.close()
        b.close()
        client.close()
        server.cleanup()


# -- 5. start-up takeover of an old unsent claim vs the catch-up policy -----------------------


def test_a_starting_replica_applies_the_catch_up_rule_instead_of_an_old_unsent_claim(
    redis_url: str, clock: FakeClock
) -> None:
    """Promise (failure table, "The same, but no other replica is running"): "If later slots
    were missed meanwhile, the catch-up rule wins: the latest missed slot fires instead." —
    "one catch-up task per entry that missed slots, not one per missed slot".

    Events: the only replica wins 10:00:10 and is killed before its fence; every replica stays
    down for an hour. The start-up takeover (`HighWaterMark.unsent`, queued for every unsent
    slot not in `missed`) now publishes the hour-old 10:00:10 *besides* the catch-up slot:
    two catch-up tasks (with catchup="skip", or outside a catchup_window, the hour-old slot
    fires although the policy says none may).
    """
    schedule = {"job": {"task": "job", "schedule": every(10).seconds}}
    dead = RedisBackend.from_url(redis_url, read_settings(make_app(redis_url, schedule).conf))
    dead.replica_id = "killed"
    old = at("10:00:10")
    assert dead.claim([Claim("job", old, task_id_for("job", old))])[0].outcome is ClaimOutcome.WON
    dead.close()
    clock.set(at("11:00:13.300"))  # an hour later, one replica starts
    publisher = RecordingPublisher()
    replica = make_scheduler(
        redis_url, clock, schedule, publisher=publisher, fork_scheduler_claim_lease=1.0
    )
    try:
        replica.setup_schedule()
        run_real_time([replica], clock, 2.5)  # the lease of the dead claim runs out
        slots = sorted(slot for _, slot in fired(publisher))
        assert slots == [at("11:00:10").isoformat()], (
            f"expected the one catch-up slot 11:00:10, got {slots}"
        )
    finally:
        replica.close()


# -- 6. `since` from the Manager's clock ------------------------------------------------------


def test_an_update_from_a_manager_with_a_fast_clock_does_not_stop_the_entry(
    redis_url: str, clock: FakeClock, reported: list[Any]
) -> None:
    """Promise 2 (never idle: replicas schedule on Redis's clock, a skewed host does not make
    them sleep through slots) and the row "A runtime entry is ... changed": "The entry starts,
    changes or stops within about a second on every replica"; "Slots ... still fire".

    Events: a runtime entry fires every 10 s; an operator changes only its args from a host
    whose clock is 60 s ahead of Redis. `Manager.update` stores `since` from its own host
    clock, and every replica queues the new definition from its first slot after that
    instant, while the superseded definition has no follow-up: five due slots (10:00:40 ..
    10:01:20) fire nowhere and are reported nowhere.
    """
    manager = Manager(make_app(redis_url, {}), clock=clock)
    manager.add("job", "reports.job", every(10).seconds)
    publisher = RecordingPublisher()
    replica = make_scheduler(redis_url, clock, {}, publisher=publisher)
    try:
        replica.setup_schedule()
        run_for(replica, clock, 21)  # 10:00:10 and 10:00:20 fire
        skewed = Manager(make_app(redis_url, {}), clock=lambda: clock.now + timedelta(seconds=60))
        skewed.update("job", args=[1])
        run_for(replica, clock, 65)  # up to 10:01:26
        window = [
            slot
            for _, slot in fired(publisher)
            if at("10:00:30").isoformat() <= slot <= at("10:01:20").isoformat()
        ]
        assert len(window) == 6, (
            f"slots 10:00:30..10:01:20 fired: {sorted(window)}; reports {reported}"
        )
    finally:
        replica.close()


# -- 7. a publish refused before sending, then SIGTERM ----------------------------------------


def test_a_stop_after_a_refused_publish_loses_nothing(
    redis_url: str, clock: FakeClock, reported: list[Any]
) -> None:
    """Promise 4 ("A normal stop (SIGTERM, SIGINT) waits until the batch in hand is published
    and recorded") and the row "A normal stop ... while a batch is being published": "Nothing
    is lost"; row "A publish is refused before anything was sent": tried again.

    Events: the broker refuses a publish (a connection error: the message certainly did not
    leave; the replica keeps its *fenced* claim to retry it a second later) and a rolling
    deploy's SIGTERM arrives in the same batch. The deferred signal stops beat at the end of
    the batch; the claim stays `publishing` for ever, so the healthy replica — whose broker
    works — reports it `in_flight` and never publishes it: a slot that was certainly never
    sent is lost.
    """

    class RefusedThenStopped(RecordingPublisher):
        def publish(self, occurrence: Occurrence) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the deploy stops this replica now
            raise ConnectionRefusedError("broker restarting")

    def beat_stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)  # what celery beat's handler does

    schedule = {"job": {"task": "job", "schedule": every(10).seconds}}
    stopping = make_scheduler(
        redis_url,
        clock,
        schedule,
        publisher=RefusedThenStopped(),
        fork_scheduler_claim_lease=1.0,
    )
    publisher = RecordingPublisher()
    healthy = make_scheduler(
        redis_url,
        clock,
        schedule,
        publisher=publisher,
        replica_id="replica-b",
        fork_scheduler_claim_lease=1.0,
    )
    previous = signal.signal(signal.SIGTERM, beat_stop)
    try:
        stopping.setup_schedule()
        healthy.setup_schedule()
        clock.set(at("10:00:10.200"))
        with pytest.raises(SystemExit):
            stopping.tick()
        stopping.close()
        run_real_time([healthy], clock, 2.5)  # the lease runs out; within the grace
        assert ("job", at("10:00:10").isoformat()) in fired(publisher), (
            f"the refused slot was never published; reports {reported}"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        healthy.close()


# -- 8. a runtime entry added again after a finished one of the same name ---------------------


def test_a_one_off_runtime_entry_added_again_runs_once_more(
    redis_url: str, clock: FakeClock, reported: list[Any]
) -> None:
    """Promise (row "A runtime entry is added"): what `add` answers as next_run fires; and
    promise 6 (`max_runs` holds): max_runs counts the runs of *this* entry.

    Events: a one-off runtime entry runs and finishes (the replica retires it, removing it
    from the store; its keys keep their state for a day), then the application adds a new
    one-off job under the same name. `store.put` clears a leftover pause of a new entry but
    not `runs`/`finished`: the new job's first claim answers `finished` (runs 1 >= 1), the
    replica retires and deletes it again, and the job `add` accepted never runs.
    """
    manager = Manager(make_app(redis_url, {}, fork_scheduler_refresh_interval=1.0), clock=clock)
    publisher = RecordingPublisher()
    replica = make_scheduler(
        redis_url, clock, {}, publisher=publisher, fork_scheduler_refresh_interval=1.0
    )
    try:
        replica.setup_schedule()
        manager.add("send-report", "reports.send", every(5).seconds, one_off=True)
        run_for(replica, clock, 12)  # runs once, then finishes and is removed
        assert len(fired(publisher)) == 1
        publisher.clear()
        job = manager.add("send-report", "reports.send", every(5).seconds, one_off=True)
        run_for(replica, clock, 12)
        assert len(fired(publisher)) == 1, (
            f"the new one-off job (next_run {job.next_run}) never ran; reports {reported}"
        )
    finally:
        replica.close()


# -- Suspicions that could not be turned into a failing test (or are weaker) -------------------
#
# * Known mark learned from an `error` answer: `_learn_marks` counts ERROR (a corrupted hwm)
#   as "seen claimed". When the operator repairs the entry by deleting the bad `hwm` field,
#   the next claim runs the data-loss restore (reason "restored") although no data was lost;
#   where INFO commandstats shows any FLUSH*/CONFIG since the start, the bound is `now` and
#   the current slot is refused (reported only as `claimed`, at debug level).
# * Redis data loss resets `runs` and `finished`: replicas that did not retire the entry (a
#   restarted one) run a max_runs entry max_runs more times after a restart without
#   persistence. The doc lists lost pause states, not lost max_runs counts.
# * Eviction (maxmemory-policy allkeys-*) or an operator's DEL of a state hash loses a mark
#   without anything INFO shows: the bound falls back to Redis's start time, i.e. to the
#   claimant's own known mark; a replica one slot behind the winner (known = previous slot)
#   then wins the slot the winner published. Not tested: needs an eviction policy the docs
#   may already forbid.
# * SIGTERM while `_flush_unmarked` (inside `stop_signals_deferred`) finds Redis down: the
#   SystemExit delivered in `finally` replaces the BackendUnavailableError, beat exits with
#   `_unmarked` unrecorded, and the other replicas report those *sent* slots as `in_flight`
#   (a false loss report; no duplicate).
# * `catchup_grace` larger than `claim_lease`: a replica retrying a transiently refused
#   publish through its own fenced claim is reported `in_flight` by the others at lease end,
#   then publishes the slot anyway (a false skip report).
# * `_on_backend_down` reports per entry the *latest* slot; when a takeover retry of an older
#   slot and the chain's newer slot of the same entry are in one failed tick in the order
#   newer-then-older, the older one is never reported `redis_unavailable` (`slot <= reported`).
# * A Manager whose clock is BEHIND Redis stores an early `since`: with catchup="all" the
#   replicas publish (up to 1000) slots that predate the add; with "latest" one of them.
# * SUPERSEDED_KEPT = 4: five updates of one entry (five refreshes) while its first
#   definition's chain item is still queued at a slot at or before the first change drop
#   that slot (the chain surfaces, finds its definition evicted, returns None: no report).
