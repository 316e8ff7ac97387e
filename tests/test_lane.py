"""The lane (issue 19): a burst's claim and publish scripts run in a thread of their own, in
the order asked, while the scheduler builds the next batch; every slot is still published once
when Redis goes away, or a stop arrives, with the next chunk's claim under way."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import pytest
import redis
from lane_helpers import burst_schedule, fail_calls, fired, one_step_beat
from replica_helpers import RecordingPublisher, make_scheduler, run_for

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.backends import Claim
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.lane import Lane
from celery_fork_scheduler.publishing import CeleryPublisher, Occurrence
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
ENTRIES = 1200  # three claim chunks (a small head, then 500 each) of 100-message batches


def test_a_threaded_lane_runs_calls_in_another_thread_in_the_order_asked() -> None:
    lane = Lane()
    ran: list[tuple[int, str]] = []
    gate = threading.Event()

    def call(number: int) -> int:
        if number == 0:
            gate.wait(5)  # the later calls are asked for while the first one still runs
        ran.append((number, threading.current_thread().name))
        return number

    try:
        futures = [lane.submit(partial(call, n), threaded=True) for n in range(5)]
        gate.set()
        assert [future.result(timeout=10) for future in futures] == [0, 1, 2, 3, 4]
    finally:
        lane.close()
    assert [number for number, _ in ran] == [0, 1, 2, 3, 4]
    assert all(name.startswith("fork-scheduler-redis") for _, name in ran)


def test_an_unthreaded_lane_runs_at_once_and_keeps_an_error_for_its_result() -> None:
    lane = Lane()
    ran: list[str] = []

    def note() -> int:
        ran.append(threading.current_thread().name)
        return 1

    ok = lane.submit(note, threaded=False)
    assert ran == [threading.current_thread().name]  # before anyone asked for the result
    failed = lane.submit(lambda: 1 // 0, threaded=False)
    assert ok.result() == 1
    with pytest.raises(ZeroDivisionError):
        failed.result()

    def stopped() -> None:
        raise SystemExit(143)

    with pytest.raises(SystemExit):  # not an error of the call: the caller stops now
        lane.submit(stopped, threaded=False)


def burst_beat(redis_url: str, clock: FakeClock, *, sent_with_claim: bool = False) -> Scheduler:
    """A replica of :data:`ENTRIES` entries every 10 s, on the one-step path: claimed, then
    published by one script per batch (or, ``sent_with_claim``, sent by the claims)."""
    return one_step_beat(
        redis_url, clock, burst_schedule(ENTRIES, width=4), sent_with_claim=sent_with_claim
    )


def test_the_next_chunk_is_claimed_in_the_lane_while_this_one_publishes(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    scheduler = burst_beat(redis_url, clock)
    backend: Any = scheduler.backend
    calls: list[tuple[str, int, str]] = []
    real_claim, real_publish = backend.claim, backend.publish_once

    def claim(claims: Sequence[Claim]) -> Any:
        calls.append(("claim", len(claims), threading.current_thread().name))
        return real_claim(claims)

    def publish_once(claims: Sequence[Claim], commands: Any) -> Any:
        calls.append(("publish", len(claims), threading.current_thread().name))
        return real_publish(claims, commands)

    backend.claim = claim
    backend.publish_once = publish_once
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
        counts = fired(redis_client)
        assert len(counts) == ENTRIES and set(counts.values()) == {1}
        assert all(name.startswith("fork-scheduler-redis") for _, _, name in calls)
        burst = [(kind, size) for kind, size, _ in calls if size > 1]
        claims_at = [index for index, (kind, _) in enumerate(burst) if kind == "claim"]
        assert len(claims_at) >= 3 and sum(burst[i][1] for i in claims_at) == ENTRIES, burst
        # Each chunk's claim (after the first) is asked for once the previous chunk's first
        # publish is: the first messages are not held back by it.
        assert all(burst[i - 1][0] == "publish" for i in claims_at[1:]), burst
        assert burst[-1][0] == "publish", burst
    finally:
        scheduler.close()


def test_redis_lost_while_the_next_chunk_is_claimed_still_publishes_every_slot_once(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """The second publish batch fails as if Redis went away, after the next chunk's claim was
    won in the lane: those won claims are neither lost nor published twice."""
    scheduler = burst_beat(redis_url, clock)
    fail_calls(scheduler, "publish_once", lambda call: call == 2)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
        first = fired(redis_client)
        assert 0 < len(first) < ENTRIES  # the burst stopped at the failure
        run_for(scheduler, clock, 3)  # Redis answers again
        counts = fired(redis_client)
        slot = "2026-03-02T10:00:10+00:00"
        assert {key for key in counts if key[1] == slot} == {
            (f"e{i:04}", slot) for i in range(ENTRIES)
        }
        assert set(counts.values()) == {1}
        for i in range(ENTRIES):
            assert redis_client.hget(KEYS.state(f"e{i:04}"), "state") == b"sent"
    finally:
        scheduler.close()


@pytest.mark.parametrize(
    ("method", "sent_with_claim"),
    [("publish_once", False), ("claim_and_send", True)],
    ids=["publish-script", "claim-that-sends"],
)
def test_a_stop_signal_while_the_lane_runs_a_script_publishes_every_claim_first(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, method: str, sent_with_claim: bool
) -> None:
    """A rolling deploy's SIGTERM arrives while the lane runs the second publish script (or
    the second chunk's claim that sends it): beat stops once every claim it won (the chunk
    being published and the next one) is published, and leaves no pending claim."""
    scheduler = burst_beat(redis_url, clock, sent_with_claim=sent_with_claim)
    backend: Any = scheduler.backend
    real = getattr(backend, method)
    calls = 0

    def call(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    def celery_beat_handler(signum: int, frame: Any) -> None:
        raise SystemExit()

    setattr(backend, method, call)
    previous = signal.signal(signal.SIGTERM, celery_beat_handler)
    scheduler.setup_schedule()
    try:
        with pytest.raises(SystemExit):
            run_for(scheduler, clock, 10.5)
        counts = fired(redis_client)
        assert len(counts) == ENTRIES and set(counts.values()) == {1}
        for i in range(ENTRIES):
            assert redis_client.hlen(KEYS.pending(f"e{i:04}")) == 0  # no claim left behind
    finally:
        signal.signal(signal.SIGTERM, previous)
        scheduler.close()


def test_redis_lost_while_admitting_a_chunk_queues_it_again(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """The claims were won, then Redis went away while taking places under the cap: the tick
    ends quietly and the chunk's slots are asked about again (found in the simulator, seed 42,
    as a crash)."""
    schedule = {f"e{i}": {"task": "t", "schedule": every(10).seconds} for i in range(3)}
    scheduler = one_step_beat(redis_url, clock, schedule, fork_scheduler_max_concurrent=100)
    fail_calls(scheduler, "take_cap_places", lambda call: call == 1)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 12)
        counts = fired(redis_client)
        slot = "2026-03-02T10:00:10+00:00"
        assert counts == Counter({(f"e{i}", slot): 1 for i in range(3)})
    finally:
        scheduler.close()


def test_a_pool_of_one_connection_keeps_every_call_in_beats_thread(
    redis_url: str, clock: FakeClock
) -> None:
    """``max_connections: 1``: a call in the lane's thread beside one in beat's would find no
    connection (and wait for a retry); the lane runs inline and the burst goes out whole."""
    publisher = RecordingPublisher()  # the fence path: beat's thread fences while claims run
    schedule = burst_schedule(ENTRIES, width=4)
    scheduler = make_scheduler(
        redis_url,
        clock,
        schedule,
        publisher=publisher,
        fork_scheduler_redis_options={"max_connections": 1},
    )
    backend: Any = scheduler.backend
    assert backend.concurrent_calls is False
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
        slots = Counter((o.entry, o.slot) for o in publisher.occurrences)
        assert len(slots) == ENTRIES and set(slots.values()) == {1}
    finally:
        scheduler.close()


class FenceFor(CeleryPublisher):
    """Celery's publisher on the Redis broker, except that the entry ``odd`` has no template:
    its slot takes the fence path inside a batch whose other slots take the one step."""

    def commands_for(self, occurrences: Sequence[Occurrence]) -> list[Any] | None:
        commands = super().commands_for(occurrences)
        if commands is None:
            return None
        return [None if o.entry == "odd" else c for o, c in zip(occurrences, commands, strict=True)]


def test_redis_lost_at_a_mixed_batchs_publish_asks_again_for_its_fence_path_slots(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """The one-step script of a batch fails as Redis goes away: the batch's slot that was to
    take the fence path is asked about again too, not left claimed and unpublished."""
    names = ["odd", *(f"e{i}" for i in range(4))]
    schedule = {name: {"task": "t", "schedule": every(10).seconds} for name in names}
    scheduler = one_step_beat(redis_url, clock, schedule, publisher=FenceFor)
    fail_calls(scheduler, "publish_once", lambda call: call == 1)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 13)
        slot = "2026-03-02T10:00:10+00:00"
        counts = fired(redis_client)
        assert {name: counts[(name, slot)] for name in names} == dict.fromkeys(names, 1)
    finally:
        scheduler.close()


def test_a_stop_with_one_step_publishes_unsettled_says_how_many(
    redis_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis went away as a one-step batch ran and is still away at the stop: beat says how
    many slots it leaves unsettled (their fate is Redis's: published and recorded, or a claim
    another replica takes over after the lease)."""
    scheduler = burst_beat(redis_url, clock)
    fail_calls(scheduler, "publish_once", lambda call: True)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
        unsettled = len(scheduler.pipeline.unsettled)
        assert unsettled > 0
        with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
            scheduler.sync()
        assert f"{unsettled} slot(s) whose one-step publish lost its answer" in caplog.text
    finally:
        scheduler.close()


def test_with_slots_sent_by_their_claims_the_next_chunk_is_decided_while_redis_runs_one(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Each chunk's slots leave with its claim, so the next chunk's claim is started before
    this one's answer is read: beat decides and builds it while Redis runs the other."""
    scheduler = burst_beat(redis_url, clock, sent_with_claim=True)
    order: list[str] = []
    real_start, real_admit = scheduler._start_claim, scheduler._admit

    def start_claim(works: Any) -> Any:
        order.append("start")
        return real_start(works)

    def admit(due: Any, results: Any, now: Any) -> Any:
        order.append("admit")
        return real_admit(due, results, now)

    scheduler._start_claim = start_claim  # type: ignore[method-assign]
    scheduler._admit = admit  # type: ignore[method-assign]
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
        counts = fired(redis_client)
        assert len(counts) == ENTRIES and set(counts.values()) == {1}
    finally:
        scheduler.close()
    assert order.count("start") >= 3, order
    first_admit = order.index("admit")
    assert order[:first_admit].count("start") >= 2, order  # the next chunk started first


@pytest.mark.parametrize("failing", [1, 2], ids=["first-chunk", "second-chunk"])
def test_redis_lost_at_a_claim_that_sends_publishes_every_slot_once_when_back(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, failing: int
) -> None:
    """The claim that sends a chunk fails as if Redis went away (the next chunk's claim may
    already be under way): every slot is published once when Redis answers again."""
    scheduler = burst_beat(redis_url, clock, sent_with_claim=True)
    fail_calls(scheduler, "claim_and_send", lambda call: call == failing)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
        run_for(scheduler, clock, 3)
        counts = fired(redis_client)
        slot = "2026-03-02T10:00:10+00:00"
        assert {key for key in counts if key[1] == slot} == {
            (f"e{i:04}", slot) for i in range(ENTRIES)
        }
        assert set(counts.values()) == {1}
        for i in range(ENTRIES):
            assert redis_client.hlen(KEYS.pending(f"e{i:04}")) == 0
    finally:
        scheduler.close()
