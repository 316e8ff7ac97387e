"""Regressions of the tick path found by an outside review (issue 13), each on a real Redis.

Every test here failed on 3faf3d9. The replicas share one process and a fake clock for the slot
maths; claims, leases and Redis ``TIME`` are real.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from replica_helpers import START, fired, make_app, make_scheduler, run_for

from celery_fork_scheduler import Manager, Scheduler, every, signals
from celery_fork_scheduler.backends import Claim
from celery_fork_scheduler.backends.base import to_epoch_us
from celery_fork_scheduler.entry import Entry
from celery_fork_scheduler.entry import entry_from_config as _entry_from_config
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import CeleryPublisher, Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher


def entry_from_config(name: str, definition: dict[str, Any]) -> Entry:
    return _entry_from_config(name, definition, default_timezone=timezone.utc, source="runtime")


@pytest.fixture
def skipped() -> Iterator[list[tuple[str, datetime, str]]]:
    seen: list[tuple[str, datetime, str]] = []

    def receive(sender: Any = None, entry: str = "", slot: Any = None, reason: str = "", **_: Any):
        seen.append((entry, slot, reason))

    signals.entry_skipped.connect(receive, weak=False)
    yield seen
    signals.entry_skipped.disconnect(receive)


def tick_until_fired(
    scheduler: Scheduler, clock: FakeClock, publisher: RecordingPublisher, key: tuple[str, str]
) -> None:
    """Tick in real time (claim leases run on Redis TIME) until ``key`` is published."""
    deadline = time.monotonic() + 20
    while key not in fired(publisher):
        assert time.monotonic() < deadline, fired(publisher)
        time.sleep(0.05)
        clock.advance(0.05)
        scheduler.tick()


# -- duplicates ------------------------------------------------------------------------------


class FlushLosesItsReply:
    """A Kombu producer whose batch reaches the broker, then the reply is lost."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def batch(self, max_size: int) -> Any:
        real = self._producer.batch(max_size=max_size)

        class LostReply:
            def __enter__(self) -> Any:
                return real.__enter__()

            def __exit__(self, *exc: Any) -> None:
                real.__exit__(*exc)
                raise redis.ConnectionError("connection lost while reading the reply")

        return LostReply()


class PipelineLosesItsReply:
    """The broker client of a Kombu Redis channel whose pipelines run, then lose the reply."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        real = self._client.pipeline(*args, **kwargs)

        class LostReply:
            pushes = False

            def __getattr__(self, name: str) -> Any:
                self.pushes = self.pushes or name == "lpush"
                return getattr(real, name)

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                real.reset()

            def execute(self) -> Any:
                replies = real.execute()
                if self.pushes:  # the messages' pipeline, not Kombu's own bookkeeping
                    raise redis.ConnectionError("connection lost while reading the reply")
                return replies

        return LostReply()


def lose_the_reply(scheduler: Scheduler, app: Any, templates: bool) -> None:
    """Make the broker lose the reply of the publish, on the Celery path or the template path."""
    if not templates:
        publisher = CeleryPublisher(
            app, lambda: FlushLosesItsReply(scheduler.producer), templates=False
        )
        scheduler.publisher = publisher
        return
    scheduler.publisher = CeleryPublisher(app, lambda: scheduler.producer)
    channel = scheduler.producer.channel

    @contextlib.contextmanager
    def conn_or_acquire(client: Any = None) -> Iterator[Any]:
        yield PipelineLosesItsReply(channel.client)

    channel.conn_or_acquire = conn_or_acquire


@pytest.mark.parametrize("templates", [False, True], ids=["celery-path", "template-path"])
def test_a_publish_of_uncertain_delivery_is_never_sent_again(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]], templates: bool
) -> None:
    # Claims in another database than the broker's: the fence path (the one-step publish of a
    # shared Redis has no reply to lose between a send and its record).
    claims_url = redis_url.rsplit("/", 1)[0] + "/1"
    app = make_app(
        claims_url, {"job": {"task": "job", "schedule": every(10).seconds}}, broker_url=redis_url
    )
    scheduler = make_scheduler(claims_url, clock, {}, app=app)
    lose_the_reply(scheduler, app, templates)
    scheduler.setup_schedule()
    broker = redis.Redis.from_url(redis_url)
    try:
        run_for(scheduler, clock, 15)
        # The first batch reached the broker; the replica never sends it a second time.
        assert broker.llen("celery") == 1
        assert ("job", datetime(2026, 3, 2, 10, 0, 10, tzinfo=timezone.utc), "in_flight") in (
            skipped
        )
    finally:
        scheduler.close()
        broker.close()


def test_a_publish_refused_before_sending_is_tried_again_within_the_grace(
    redis_url: str, clock: FakeClock
) -> None:
    class RefusesOnce(RecordingPublisher):
        refused = False

        def publish(self, occurrence: Occurrence) -> None:
            if not self.refused:
                self.refused = True
                raise ConnectionRefusedError("broker restarting")
            super().publish(occurrence)

    publisher = RefusesOnce()
    scheduler = make_scheduler(
        redis_url,
        clock,
        {"job": {"task": "job", "schedule": every(10).seconds}},
        publisher=publisher,
    )
    try:
        scheduler.setup_schedule()
        run_for(scheduler, clock, 13)
        assert fired(publisher) == {("job", "2026-03-02T10:00:10+00:00"): 1}
    finally:
        scheduler.close()


# -- silent misses -----------------------------------------------------------------------------


def test_catch_up_all_claims_each_entry_oldest_first_in_a_burst_over_one_chunk(
    redis_url: str, clock: FakeClock
) -> None:
    names = [f"e{i:03}" for i in range(300)]
    schedule = {
        name: {"task": "t", "schedule": every(1).seconds, "catchup": "all"} for name in names
    }
    client = redis.Redis.from_url(redis_url)
    keys = Keys("scheduler:")
    last_seen = to_epoch_us(datetime(2026, 3, 2, 9, 59, 50, tzinfo=timezone.utc))
    for name in names:
        client.hset(keys.state(name), mapping={"hwm": last_seen, "state": "sent"})
    client.close()
    publisher = RecordingPublisher()
    # A replica id whose chunks start past the first one (the order is the replica's own).
    scheduler = make_scheduler(
        redis_url, clock, schedule, publisher=publisher, replica_id="replica-7"
    )
    try:
        scheduler.setup_schedule()
        scheduler.tick()
        counts = Counter(o.entry for o in publisher.occurrences)
        # 09:59:51 .. 10:00:00: ten missed slots per entry, 3000 in one tick.
        assert counts == dict.fromkeys(names, 10)
    finally:
        scheduler.close()


@pytest.fixture
def empty_replica(
    redis_url: str, clock: FakeClock
) -> Iterator[tuple[Scheduler, RecordingPublisher]]:
    """A replica with no static entries, set up; closed after the test."""
    publisher = RecordingPublisher()
    scheduler = make_scheduler(redis_url, clock, {}, publisher=publisher)
    try:
        scheduler.setup_schedule()
        yield scheduler, publisher
    finally:
        scheduler.close()


def test_a_runtime_edit_in_the_tick_its_slot_is_due_keeps_that_slot(
    empty_replica: tuple[Scheduler, RecordingPublisher], clock: FakeClock
) -> None:
    scheduler, publisher = empty_replica
    first = entry_from_config("edited", {"task": "t", "schedule": every(10).seconds})
    scheduler.put_entry(first, clock.now)
    clock.advance(9.8)  # 10:00:10.100: the slot 10:00:10 is due
    changed = entry_from_config("edited", {"task": "t", "schedule": every(10).seconds, "args": [2]})
    scheduler.put_entry(changed, clock.now)
    scheduler.tick()
    assert fired(publisher) == {("edited", "2026-03-02T10:00:10+00:00"): 1}
    run_for(scheduler, clock, 10)
    assert fired(publisher)[("edited", "2026-03-02T10:00:20+00:00")] == 1
    assert publisher.occurrences[-1].args == (2,)


def test_a_takeover_retry_follows_its_entry_through_a_runtime_edit(
    redis_url: str, clock: FakeClock
) -> None:
    """A slot held by a dead replica is taken over even if its entry changed meanwhile."""
    definition = {"task": "t", "schedule": every(10).seconds}
    dead = make_scheduler(redis_url, clock, {}, replica_id="dead", fork_scheduler_claim_lease=3)
    publisher = RecordingPublisher()
    alive = make_scheduler(
        redis_url, clock, {}, publisher=publisher, replica_id="alive", fork_scheduler_claim_lease=3
    )
    try:
        dead.setup_schedule()
        slot = datetime(2026, 3, 2, 10, 0, 10, tzinfo=timezone.utc)
        won = dead.backend.claim([Claim("edited", slot, task_id_for("edited", slot))])
        assert won[0].outcome.publish
        alive.setup_schedule()
        alive.put_entry(entry_from_config("edited", definition), clock.now)
        clock.advance(9.8)
        alive.tick()  # pending: asks again when the lease ends
        alive.put_entry(entry_from_config("edited", {**definition, "args": [1]}), clock.now)
        tick_until_fired(alive, clock, publisher, ("edited", "2026-03-02T10:00:10+00:00"))
        assert fired(publisher) == {("edited", "2026-03-02T10:00:10+00:00"): 1}
    finally:
        dead.close()
        alive.close()


def test_a_runtime_entry_fires_the_first_slot_after_the_instant_it_was_added(
    empty_replica: tuple[Scheduler, RecordingPublisher], clock: FakeClock
) -> None:
    scheduler, publisher = empty_replica
    added_at = clock.now  # 10:00:00.300; the promised next_run is 10:00:01
    clock.advance(1.2)  # the replica sees it at its next refresh, after that slot
    entry = entry_from_config("late", {"task": "t", "schedule": every(1).seconds})
    scheduler.put_entry(entry, clock.now, since=added_at)
    scheduler.tick()
    assert fired(publisher)[("late", "2026-03-02T10:00:01+00:00")] == 1


def test_a_finished_entry_is_retired_instead_of_claimed_at_every_slot(
    redis_url: str, clock: FakeClock
) -> None:
    publisher = RecordingPublisher()
    schedule = {"once": {"task": "t", "schedule": every(1).seconds, "max_runs": 1}}
    scheduler = make_scheduler(redis_url, clock, schedule, publisher=publisher)
    client = redis.Redis.from_url(redis_url)
    try:
        scheduler.setup_schedule()
        run_for(scheduler, clock, 30)
        assert len(publisher.occurrences) == 1
        history = client.lrange(Keys("scheduler:").history("once"), 0, -1)
        # The run and one 'finished' record, not one per second since.
        assert len(history) == 2
        assert not [item for item in scheduler.queue.items() if item.entry.name == "once"]
    finally:
        scheduler.close()
        client.close()


def test_a_restarted_replica_takes_over_unsent_claims_below_the_mark(
    redis_url: str, clock: FakeClock
) -> None:
    """Every replica that saw a chunk pending died: the next one to start finds it."""
    schedule = {"job": {"task": "t", "schedule": every(1).seconds}}
    dead = make_scheduler(redis_url, clock, schedule, replica_id="dead")
    try:
        dead.setup_schedule()
        slot = datetime(2026, 3, 2, 9, 59, 58, tzinfo=timezone.utc)  # before the fresh start
        assert dead.backend.claim([Claim("job", slot, task_id_for("job", slot))])[0].outcome.publish
        later = slot + timedelta(seconds=1)
        claimed = dead.backend.claim([Claim("job", later, task_id_for("job", later))])
        assert claimed[0].outcome.publish
        dead.backend.mark_sent([Claim("job", later, task_id_for("job", later))])
    finally:
        dead.close()
    publisher = RecordingPublisher()
    fresh = make_scheduler(
        redis_url,
        clock,
        schedule,
        publisher=publisher,
        replica_id="fresh",
        fork_scheduler_claim_lease=1,
    )
    try:
        fresh.setup_schedule()
        tick_until_fired(fresh, clock, publisher, ("job", slot.isoformat()))
        assert fired(publisher)[("job", slot.isoformat())] == 1
    finally:
        fresh.close()


# -- beat never dies for one entry -----------------------------------------------------------


def test_a_broker_that_cannot_be_reached_at_the_first_publish_does_not_stop_beat(
    redis_url: str, clock: FakeClock
) -> None:
    class NoBroker(RecordingPublisher):
        down = True

        def prepare(self) -> None:
            if self.down:
                from kombu.exceptions import OperationalError

                raise OperationalError("Error 111 connecting to broker. Connection refused.")

    publisher = NoBroker()
    scheduler = make_scheduler(
        redis_url, clock, {"job": {"task": "t", "schedule": every(2).seconds}}, publisher=publisher
    )
    try:
        scheduler.setup_schedule()
        run_for(scheduler, clock, 2.5)
        assert publisher.occurrences == []
        publisher.down = False
        run_for(scheduler, clock, 2)
        assert fired(publisher) == {
            ("job", "2026-03-02T10:00:02+00:00"): 1,
            ("job", "2026-03-02T10:00:04+00:00"): 1,
        }
    finally:
        scheduler.close()


def test_lazy_args_that_raise_give_the_claim_back_and_the_others_fire(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]]
) -> None:
    def broken() -> Sequence[int]:
        raise ValueError("no database")

    publisher = RecordingPublisher()
    schedule = {
        "broken": {"task": "t", "schedule": every(1).seconds, "args": broken},
        "fine": {"task": "t", "schedule": every(1).seconds},
    }
    scheduler = make_scheduler(redis_url, clock, schedule, publisher=publisher)
    client = redis.Redis.from_url(redis_url)
    try:
        scheduler.setup_schedule()
        run_for(scheduler, clock, 3)
        assert {entry for entry, _ in fired(publisher)} == {"fine"}
        assert ("broken", datetime(2026, 3, 2, 10, 0, 1, tzinfo=timezone.utc), "error") in skipped
        # Given back: nothing left pending or fenced, no run counted.
        assert not client.hlen(Keys("scheduler:").pending("broken"))
        assert int(client.hget(Keys("scheduler:").state("broken"), "runs") or 0) == 0
    finally:
        scheduler.close()
        client.close()


def test_a_buffer_one_entry_whose_message_is_not_json_fails_alone(
    redis_url: str, clock: FakeClock
) -> None:
    publisher = RecordingPublisher()
    schedule = {
        "held": {
            "task": "t",
            "schedule": every(1).seconds,
            "overlap": "buffer_one",
            "args": lambda: [datetime(2026, 1, 1)],
        },
        "fine": {"task": "t", "schedule": every(1).seconds},
    }
    scheduler = make_scheduler(redis_url, clock, schedule, publisher=publisher)
    try:
        scheduler.setup_schedule()
        run_for(scheduler, clock, 3)
        assert {entry for entry, _ in fired(publisher)} == {"fine"}
        assert len(publisher.occurrences) == 3
    finally:
        scheduler.close()


def test_a_corrupted_mark_fails_its_entry_only(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]]
) -> None:
    names = [f"e{i:02}" for i in range(20)]
    client = redis.Redis.from_url(redis_url)
    client.hset(Keys("scheduler:").state("e07"), "hwm", "not-a-number")
    client.close()
    publisher = RecordingPublisher()
    schedule = {name: {"task": "t", "schedule": every(1).seconds} for name in names}
    scheduler = make_scheduler(redis_url, clock, schedule, publisher=publisher)
    try:
        scheduler.setup_schedule()
        run_for(scheduler, clock, 2)
        assert {entry for entry, _ in fired(publisher)} == set(names) - {"e07"}
        assert any(entry == "e07" and reason == "error" for entry, _, reason in skipped)
    finally:
        scheduler.close()


def run_until_stopped(scheduler: Scheduler, clock: FakeClock) -> None:
    """Start the scheduler and run it under celery beat's SIGTERM handler (SystemExit) until a
    SIGTERM sent within its first second stops it."""

    def celery_beat_handler(signum: int, frame: Any) -> None:
        raise SystemExit()

    previous = signal.signal(signal.SIGTERM, celery_beat_handler)
    try:
        scheduler.setup_schedule()
        with pytest.raises(SystemExit):
            run_for(scheduler, clock, 1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_stop_signal_after_the_fence_waits_for_the_batch_to_be_sent_and_recorded(
    redis_url: str, clock: FakeClock
) -> None:
    class StoppedMidPublish(RecordingPublisher):
        def publish_many(self, occurrences: Sequence[Occurrence]) -> list[Exception | None]:
            os.kill(os.getpid(), signal.SIGTERM)  # a rolling deploy, mid-batch
            return super().publish_many(occurrences)

    publisher = StoppedMidPublish()
    schedule = {f"e{i}": {"task": "t", "schedule": every(1).seconds} for i in range(5)}
    scheduler = make_scheduler(redis_url, clock, schedule, publisher=publisher)
    client = redis.Redis.from_url(redis_url)
    try:
        run_until_stopped(scheduler, clock)
        assert len(publisher.occurrences) == 5
        keys = Keys("scheduler:")
        # Recorded as sent before beat exits: nobody reports them in flight, nothing is lost.
        for i in range(5):
            assert client.hget(keys.state(f"e{i}"), "state") == b"sent"
            assert not client.hlen(keys.pending(f"e{i}"))
    finally:
        scheduler.close()
        client.close()


# -- bounded -----------------------------------------------------------------------------------


def test_an_outage_reports_each_entry_without_growing_per_slot(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]]
) -> None:
    names = [f"e{i:02}" for i in range(10)]
    schedule = {name: {"task": "t", "schedule": every(1).seconds} for name in names}
    scheduler = make_scheduler(
        "redis://127.0.0.1:1/0",
        clock,
        schedule,
        fork_scheduler_max_retries=0,
        fork_scheduler_retry_delay=0,
    )
    try:
        scheduler.setup_schedule()
        run_for(scheduler, clock, 60, step=1)
        assert len(scheduler.outage.reported_entries) <= len(names)
        reasons = Counter(reason for _, _, reason in skipped)
        assert reasons["redis_unavailable"] >= len(names)
    finally:
        scheduler.close()


@pytest.mark.parametrize(
    "step",
    [
        # A stop while the fence request is on its way must not leave fenced slots that nobody
        # publishes (the other replicas would report them in flight).
        "begin_publish",
        # A rolling deploy's SIGTERM between winning a claim and its fence must not leave the
        # claim to the others' lease: published a lease late, after the deploy, or not at all
        # if the deploy stops every replica (CI, rolling deploy scenario).
        "claim",
    ],
)
def test_a_stop_signal_inside_the_claim_path_waits_for_the_batch_to_be_sent_and_recorded(
    redis_url: str, clock: FakeClock, step: str
) -> None:
    publisher = RecordingPublisher()
    schedule = {f"e{i}": {"task": "t", "schedule": every(1).seconds} for i in range(3)}
    scheduler = make_scheduler(redis_url, clock, schedule, publisher=publisher)
    real_step = getattr(scheduler.backend, step)

    def step_then_stopped(claims: Sequence[Claim]) -> Any:
        reply = real_step(claims)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives before the reply is handled
        return reply

    setattr(scheduler.backend, step, step_then_stopped)
    client = redis.Redis.from_url(redis_url)
    try:
        run_until_stopped(scheduler, clock)
        assert len(publisher.occurrences) == 3
        keys = Keys("scheduler:")
        for i in range(3):
            assert client.hget(keys.state(f"e{i}"), "state") == b"sent"
    finally:
        scheduler.close()
        client.close()


def test_a_runtime_entry_changed_before_a_replica_saw_it_fires_from_its_creation(
    redis_url: str, clock: FakeClock
) -> None:
    """Added, then changed within one refresh: the replica never saw the first definition,
    and the slot due between the two changes must still fire."""
    publisher = RecordingPublisher()
    scheduler = make_scheduler(redis_url, clock, {}, publisher=publisher)
    manager = Manager(make_app(redis_url, {}), clock=clock)
    try:
        scheduler.setup_schedule()
        scheduler.tick()
        clock.advance(0.5)  # 10:00:00.800
        manager.every(1).seconds.name("quick").do("t")
        clock.advance(0.5)  # 10:00:01.300: the slot 10:00:01 is due, not yet seen
        manager.update("quick", args=[2])
        clock.advance(0.8)  # the replica's next refresh
        scheduler.tick()
        assert fired(publisher)[("quick", "2026-03-02T10:00:01+00:00")] == 1
    finally:
        scheduler.close()


def test_a_removed_runtime_entry_is_refused_to_a_replica_that_has_not_seen_the_removal(
    redis_url: str, clock: FakeClock, skipped: list[tuple[str, datetime, str]]
) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(redis_url, clock, {}, publisher=publisher)
    manager = Manager(make_app(redis_url, {}), clock=clock)
    try:
        scheduler.setup_schedule()
        manager.every(1).seconds.name("gone").do("t")
        clock.advance(1)
        scheduler.tick()  # loaded
        manager.remove("gone")
        publisher.clear()
        clock.advance(0.1)  # due before this replica's next refresh
        scheduler._next_refresh = float("inf")  # it has not seen the removal yet
        run_for(scheduler, clock, 2)
        assert fired(publisher) == {}
        assert any(entry == "gone" and reason == "removed" for entry, _, reason in skipped)
    finally:
        scheduler.close()


def test_an_entry_whose_last_run_is_given_back_under_the_cap_is_not_retired(
    redis_url: str, clock: FakeClock
) -> None:
    """A batch wins the last allowed run, then hears `finished` for the next slot; the cap
    gives the won run back: the entry has a run left and must keep firing."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys("scheduler:")
    last_seen = to_epoch_us(datetime(2026, 3, 2, 9, 59, 57, tzinfo=timezone.utc))
    client.hset(keys.state("once"), mapping={"hwm": last_seen, "state": "sent"})
    client.zadd(keys.cap, {"someone-else": to_epoch_us(datetime.now(timezone.utc)) + 60_000_000})
    publisher = RecordingPublisher()
    schedule = {
        "once": {"task": "t", "schedule": every(1).seconds, "max_runs": 1, "catchup": "all"}
    }
    scheduler = make_scheduler(
        redis_url, clock, schedule, publisher=publisher, fork_scheduler_max_concurrent=1
    )
    try:
        scheduler.setup_schedule()
        scheduler.tick()  # 09:59:58 won then capped, 09:59:59 finished, 10:00:00 finished
        assert publisher.occurrences == []
        client.zrem(keys.cap, "someone-else")
        run_for(scheduler, clock, 1.5)
        assert len(publisher.occurrences) == 1
    finally:
        scheduler.close()
        client.close()


def test_start_up_warns_once_about_unknown_tasks_and_arguments_that_do_not_fit(
    redis_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(
        redis_url,
        {
            "typo": {"task": "tasks.ad", "schedule": every(10).seconds},
            "short": {"task": "tasks.add", "schedule": every(10).seconds, "args": (1,)},
            "fine": {"task": "tasks.add", "schedule": every(10).seconds, "args": (1, 2)},
        },
    )

    @app.task(name="tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        scheduler = make_scheduler(redis_url, clock, {}, app=app)  # beat sets up at construction
    try:
        lines = [r.getMessage() for r in caplog.records]
        assert sum("entry typo: task 'tasks.ad' is not registered" in m for m in lines) == 1
        assert sum("entry short, field args/kwargs: they do not fit" in m for m in lines) == 1
        assert not any("entry fine" in m for m in lines)
    finally:
        scheduler.close()


def test_an_outage_ends_with_one_summary_of_what_was_missed(
    redis_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"e{i}" for i in range(3)]
    schedule = {name: {"task": "t", "schedule": every(1).seconds} for name in names}
    scheduler = make_scheduler(redis_url, clock, schedule, fork_scheduler_max_retries=0)
    try:
        scheduler.setup_schedule()
        real_claim = scheduler.backend.claim

        def down(claims: Sequence[Claim]) -> Any:
            raise BackendUnavailableError("Redis unreachable (test)")

        scheduler.backend.claim = down  # type: ignore[method-assign]
        run_for(scheduler, clock, 3, step=1)
        scheduler.backend.claim = real_claim  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
            run_for(scheduler, clock, 1, step=1)
        summaries = [r.getMessage() for r in caplog.records if "slots of" in r.getMessage()]
        assert len(summaries) == 1
        assert summaries[0].startswith("fork scheduler: 9 slots of 3 entries missed between")
    finally:
        scheduler.close()


def test_the_harness_does_not_warn_about_replicas_in_a_users_tests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from celery_fork_scheduler.testing import ScheduleHarness

    app = Celery("users-suite", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {"job": {"task": "t", "schedule": every(10).seconds}}
    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        harness = ScheduleHarness(app, start=START)
    harness.close()
    assert "single replica" not in caplog.text


def test_the_banner_shows_the_replica_id_the_replica_uses(redis_url: str) -> None:
    """Celery builds a scheduler of its own for the banner (lazy): it must name the replica
    that then runs, as the logs, history and ``schedule replicas`` do."""
    app = make_app(redis_url, {})
    banner = Scheduler(app, lazy=True)
    running = Scheduler(app)
    try:
        assert running.backend.replica_id in banner.info
    finally:
        banner.close()
        running.close()
