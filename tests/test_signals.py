"""Beat-side signals: entry_due, entry_dispatched, entry_skipped (each reason), entry_failed.

In-process Scheduler instances on a fake clock, with a real Redis for claims (the fixtures of
tests/conftest.py). The fake clock starts in the past of the real one, so Redis TIME never
answers "early".
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
import replica_helpers

from celery_fork_scheduler import Manager, Scheduler, every, signals
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import Occurrence
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher, free_port

BEAT_SIGNALS = {
    "due": signals.entry_due,
    "dispatched": signals.entry_dispatched,
    "skipped": signals.entry_skipped,
    "failed": signals.entry_failed,
}


def slot(second: int) -> datetime:
    """The slot at 10:00:<second> of the test day."""
    return datetime.fromisoformat(f"2026-03-02T10:00:{second:02}+00:00")


class Events:
    """Every beat-side signal sent while the fixture is active, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def of(self, kind: str, sender: Any = None) -> list[dict[str, Any]]:
        return [
            args
            for name, args in self.sent
            if name == kind and (sender is None or args["sender"] is sender)
        ]

    def keys(self, kind: str, sender: Any = None) -> list[tuple[str, datetime]]:
        return [(args["entry"], args["slot"]) for args in self.of(kind, sender)]


@pytest.fixture
def events() -> Iterator[Events]:
    recorded = Events()
    for name, signal in BEAT_SIGNALS.items():

        def receiver(sender: Any = None, signal: Any = None, _name: str = name, **kw: Any) -> None:
            recorded.sent.append((_name, {"sender": sender, **kw}))

        signal.connect(receiver, weak=False, dispatch_uid=f"test-signals-{name}")
    yield recorded
    for name, signal in BEAT_SIGNALS.items():
        signal.disconnect(dispatch_uid=f"test-signals-{name}")


class Beat:
    """One in-process replica: a Scheduler with its own Redis backend and publisher."""

    def __init__(
        self,
        redis_url: str,
        schedule: dict[str, Any],
        clock: FakeClock,
        *,
        publisher: Any = None,
        backend_url: str | None = None,
        **conf: Any,
    ) -> None:
        self.app = replica_helpers.make_app(redis_url, schedule, main="signals", **conf)
        self.clock = clock
        self.monotonic = 0.0
        self.publisher = publisher or RecordingPublisher()
        self.backend = RedisBackend.from_url(backend_url or redis_url, read_settings(self.app.conf))
        self.backend.replica_id = f"replica-{id(self):x}"
        self.scheduler = Scheduler(
            self.app,
            clock=clock,
            backend=self.backend,
            publisher=self.publisher,
            monotonic=lambda: self.monotonic,
            exit_on_config_error=False,
        )

    def run_for(self, seconds: float, step: float = 0.25) -> None:
        end = self.clock.now + timedelta(seconds=seconds)
        while self.clock.now < end:
            self.scheduler.tick()
            self.clock.advance(min(step, (end - self.clock.now).total_seconds()))
        self.scheduler.tick()


@pytest.fixture
def beats(redis_url: str, clock: FakeClock) -> Iterator[Any]:
    yield from replica_helpers.closed_after(
        lambda schedule, **kwargs: Beat(redis_url, schedule, clock, **kwargs)
    )


def every_second(**policies: Any) -> dict[str, Any]:
    return {"task": "t", "schedule": every(1).seconds, **policies}


# -- due and dispatched ---------------------------------------------------------------------------


def test_due_and_dispatched_are_sent_once_per_occurrence_with_their_arguments(
    beats: Any, events: Events
) -> None:
    beat = beats({"a": every_second(), "b": {"task": "t", "schedule": every(2).seconds}})
    beat.run_for(4)

    expected = [("a", slot(s)) for s in (1, 2, 3, 4)] + [("b", slot(s)) for s in (2, 4)]
    assert sorted(events.keys("due")) == sorted(expected)
    assert sorted(events.keys("dispatched")) == sorted(expected)
    assert events.of("skipped") == [] and events.of("failed") == []
    for args in events.of("dispatched"):
        assert args["sender"] is beat.scheduler
        assert isinstance(args["slot"], datetime) and args["slot"].utcoffset() == timedelta(0)
        assert args["task_id"] == task_id_for(args["entry"], args["slot"])
        assert args["replica"] == beat.backend.replica_id
    # what was signalled is what was published, and each due came before its dispatch
    published = [(o.entry, o.slot, o.task_id) for o in beat.publisher.occurrences]
    assert published == [(a["entry"], a["slot"], a["task_id"]) for a in events.of("dispatched")]
    order = [(name, args["entry"], args["slot"]) for name, args in events.sent]
    for key in expected:
        assert order.index(("due", *key)) < order.index(("dispatched", *key))


def test_each_dispatch_is_logged_at_info_with_entry_slot_and_task_id(
    beats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    beat = beats({"a": every_second()})
    with caplog.at_level(logging.INFO, logger="celery_fork_scheduler"):
        beat.run_for(2)
    lines = [r for r in caplog.records if r.getMessage().startswith("fork scheduler: sent a ")]
    assert len(lines) == 2
    for record, second in zip(lines, (1, 2), strict=True):
        assert record.levelno == logging.INFO
        message = record.getMessage()
        assert f"slot {slot(second).isoformat()}" in message
        assert task_id_for("a", slot(second)) in message


# -- every skip reason ----------------------------------------------------------------------------


def assert_skipped(events: Events, beat: Beat, expected: list[tuple[str, datetime, str]]) -> None:
    got = [(a["entry"], a["slot"], a["reason"]) for a in events.of("skipped", beat.scheduler)]
    assert sorted(got) == sorted(expected)
    for entry, when, _ in expected:
        assert (entry, when) in events.keys("due", beat.scheduler)
        assert (entry, when) not in events.keys("dispatched", beat.scheduler)
    assert all(reason in signals.SKIP_REASONS for _, _, reason in got)


def test_skipped_claimed_when_another_replica_published_the_slot(
    beats: Any, clock: FakeClock, events: Events
) -> None:
    first = beats({"a": every_second(), "b": every_second()})
    second = beats({"a": every_second(), "b": every_second()})
    for _ in range(2):
        clock.advance(1)
        first.scheduler.tick()
        second.scheduler.tick()
    keys = [(e, slot(s)) for s in (1, 2) for e in ("a", "b")]
    assert sorted(events.keys("dispatched", first.scheduler)) == sorted(keys)
    assert events.of("dispatched", second.scheduler) == []
    assert_skipped(events, second, [(e, s, "claimed") for e, s in keys])
    assert events.of("skipped", first.scheduler) == []


def test_skipped_busy_while_a_singleton_run_holds_the_running_marker(
    beats: Any, events: Events, redis_client: redis.Redis
) -> None:
    beat = beats({"s": every_second(singleton=True), "free": every_second()})
    redis_client.set(Keys("scheduler:").running("s"), "the-previous-run", px=60_000)
    beat.run_for(2)
    assert_skipped(events, beat, [("s", slot(1), "busy"), ("s", slot(2), "busy")])
    assert events.keys("dispatched") == [("free", slot(1)), ("free", slot(2))]


def test_skipped_buffered_then_busy_with_buffer_one(
    beats: Any, events: Events, redis_client: redis.Redis
) -> None:
    beat = beats({"b": every_second(overlap="buffer_one")})
    redis_client.set(Keys("scheduler:").running("b"), "the-previous-run", px=60_000)
    beat.run_for(3)
    # the first slot while running is held back, the next ones find the buffer full
    assert_skipped(
        events,
        beat,
        [("b", slot(1), "buffered"), ("b", slot(2), "busy"), ("b", slot(3), "busy")],
    )


def test_a_held_run_superseded_by_a_newer_slot_is_reported_skipped_superseded(
    beats: Any, events: Events, redis_client: redis.Redis
) -> None:
    keys = Keys("scheduler:")
    beat = beats({"b": every_second(overlap="buffer_one")})
    redis_client.set(keys.running("b"), "the-previous-run", px=60_000)
    beat.run_for(1)
    assert redis_client.exists(keys.buffered("b"))
    # Its runner died (the marker expired): the next slot is won and replaces the held run,
    # which was never published: a miss, reported (seed 5108 of the simulator lost it silently).
    redis_client.delete(keys.running("b"))
    beat.run_for(1)
    assert events.keys("dispatched") == [("b", slot(2))]
    assert_skipped(events, beat, [("b", slot(1), "buffered"), ("b", slot(1), "superseded")])
    assert not redis_client.exists(keys.buffered("b"))
    assert redis_client.hget(keys.state("b"), "skips:superseded") == b"1"
    history = [json.loads(item) for item in redis_client.lrange(keys.history("b"), 0, -1)]
    superseded = [item for item in history if item["outcome"] == "skipped:superseded"]
    assert [item["task_id"] for item in superseded] == [task_id_for("b", slot(1))]
    assert superseded[0]["slot"] == int(slot(1).timestamp() * 1_000_000)


def test_skipped_capped_when_max_concurrent_is_reached(beats: Any, events: Events) -> None:
    beat = beats({"a": every_second(), "b": every_second()}, fork_scheduler_max_concurrent=1)
    beat.clock.advance(1)
    beat.scheduler.tick()
    dispatched = events.keys("dispatched")
    assert len(dispatched) == 1
    [(winner, _)] = dispatched
    loser = "b" if winner == "a" else "a"
    assert_skipped(events, beat, [(loser, slot(1), "capped")])
    # no worker frees the place: the next slot of both is capped
    beat.clock.advance(1)
    beat.scheduler.tick()
    assert len(events.keys("dispatched")) == 1
    assert_skipped(
        events,
        beat,
        [(loser, slot(1), "capped"), ("a", slot(2), "capped"), ("b", slot(2), "capped")],
    )


@pytest.mark.parametrize("how", ["manager", "store"])
def test_skipped_paused(beats: Any, events: Events, how: str) -> None:
    beat = beats({"p": every_second(), "q": every_second()})
    manager = Manager(beat.app)
    if how == "manager":
        assert manager.pause("p", note="maintenance") == ["p"]
    else:
        manager.store().pause(["p"], "maintenance")
    beat.run_for(2)
    assert_skipped(events, beat, [("p", slot(1), "paused"), ("p", slot(2), "paused")])
    assert events.keys("dispatched") == [("q", slot(1)), ("q", slot(2))]
    manager.resume("p")
    beat.run_for(1)
    assert ("p", slot(3)) in events.keys("dispatched")


def test_skipped_finished_after_max_runs(beats: Any, events: Events) -> None:
    beat = beats({"m": every_second(max_runs=2)})
    beat.run_for(4)
    assert events.keys("dispatched") == [("m", slot(1)), ("m", slot(2))]
    # Reported once, then the entry is retired: never claimed again.
    assert_skipped(events, beat, [("m", slot(3), "finished")])


def test_skipped_redis_unavailable_publishes_nothing(
    beats: Any, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    beat = beats(
        {"a": every_second(), "b": every_second()},
        backend_url=closed,
        fork_scheduler_max_retries=0,
        fork_scheduler_retry_delay=0,
    )
    beat.clock.advance(1)
    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        beat.scheduler.tick()
    assert_skipped(
        events, beat, [("a", slot(1), "redis_unavailable"), ("b", slot(1), "redis_unavailable")]
    )
    assert beat.publisher.occurrences == []
    errors = [r for r in caplog.records if "claim backend unavailable" in r.getMessage()]
    assert [r.levelno for r in errors] == [logging.ERROR]


def test_an_outage_reports_each_slot_due_and_skipped_once(beats: Any, events: Events) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    beat = beats({"a": every_second()}, backend_url=closed, fork_scheduler_max_retries=0)
    beat.run_for(3)
    assert collections.Counter(events.keys("due")).most_common(1)[0][1] == 1
    assert collections.Counter(events.keys("skipped")).most_common(1)[0][1] == 1


# -- publish failures ---------------------------------------------------------------------------


class FailingPublisher(RecordingPublisher):
    """Raises for the first ``failures`` publishes of each entry in ``entries``."""

    def __init__(self, entries: set[str], failures: int = 1_000_000) -> None:
        super().__init__()
        self.entries = entries
        self.left = collections.Counter({entry: failures for entry in entries})
        self.raised: list[BaseException] = []

    def publish(self, occurrence: Occurrence) -> None:
        if occurrence.entry in self.entries and self.left[occurrence.entry] > 0:
            self.left[occurrence.entry] -= 1
            exc = ConnectionError(f"broker down for {occurrence.entry}")
            self.raised.append(exc)
            raise exc
        super().publish(occurrence)


def test_failed_when_the_publisher_raises_then_dispatched_on_the_retry(
    beats: Any, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = FailingPublisher({"a"}, failures=1)
    beat = beats({"a": every_second(), "ok": every_second()}, publisher=publisher)
    beat.clock.advance(1)
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        beat.scheduler.tick()
    [failed] = events.of("failed")
    assert failed["sender"] is beat.scheduler
    assert (failed["entry"], failed["slot"]) == ("a", slot(1))
    assert failed["task_id"] == task_id_for("a", slot(1))
    assert failed["exception"] is publisher.raised[0]
    assert ("a", slot(1)) not in events.keys("dispatched")
    assert ("ok", slot(1)) in events.keys("dispatched")
    assert "publishing a (t) for slot" in caplog.text
    # retried a second later, inside the catch-up grace: published once, same task id
    beat.run_for(1.5)
    assert events.keys("dispatched").count(("a", slot(1))) == 1
    assert len(events.of("failed")) == 1
    assert [o.task_id for o in publisher.occurrences if o.slot == slot(1) and o.entry == "a"] == [
        task_id_for("a", slot(1))
    ]


# -- receivers that raise -------------------------------------------------------------------------


def test_a_raising_receiver_changes_nothing_else_and_is_logged(
    beats: Any, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(sender: Any = None, **_: Any) -> None:
        raise RuntimeError("receiver bug")

    later: list[str] = []

    def after(sender: Any = None, signal: Any = None, **_: Any) -> None:
        later.append(signal.name)

    for signal in BEAT_SIGNALS.values():
        signal.connect(explode, weak=False, dispatch_uid="test-explode")
        signal.connect(after, weak=False, dispatch_uid="test-after")
    try:
        beat = beats(
            {"a": every_second(), "p": every_second(), "f": every_second()},
            publisher=FailingPublisher({"f"}),
        )
        Manager(beat.app).pause("p")
        with caplog.at_level(logging.ERROR):
            beat.run_for(3)
    finally:
        for signal in BEAT_SIGNALS.values():
            signal.disconnect(dispatch_uid="test-explode")
            signal.disconnect(dispatch_uid="test-after")
    assert beat.publisher.fired("a") == [slot(s).isoformat() for s in (1, 2, 3)]
    assert events.keys("dispatched") == [("a", slot(s)) for s in (1, 2, 3)]
    assert sorted(events.keys("skipped")) == [("p", slot(s)) for s in (1, 2, 3)]
    assert {entry for entry, _ in events.keys("failed")} == {"f"}
    # the receiver connected after the raising one got every signal, as the first one did
    expected = collections.Counter(f"entry_{name}" for name, _ in events.sent)
    assert collections.Counter(later) == expected
    assert set(expected) == {"entry_due", "entry_dispatched", "entry_skipped", "entry_failed"}
    raised = [r for r in caplog.records if "receiver bug" in r.getMessage()]
    assert len(raised) == len(events.sent)


# -- logging of skips ---------------------------------------------------------------------------


def test_capped_skips_warn_at_most_once_a_minute_and_count_the_rest(
    beats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    beat = beats(
        {"a": every_second(), "b": every_second(), "c": every_second()},
        fork_scheduler_max_concurrent=1,
    )
    with caplog.at_level(logging.DEBUG, logger="celery_fork_scheduler"):
        beat.run_for(3)  # 2 + 3 + 3 capped skips
        beat.monotonic += 61
        beat.run_for(1)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "capped" in r.getMessage()
    ]
    assert len(warnings) == 2
    assert "more like it" not in warnings[0]
    assert "(7 more like it since the last warning)" in warnings[1]


def test_ordinary_skips_are_logged_at_debug_only(
    beats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    beat = beats({"p": every_second()})
    Manager(beat.app).pause("p")
    with caplog.at_level(logging.DEBUG, logger="celery_fork_scheduler"):
        beat.run_for(2)
    skips = [r for r in caplog.records if "skipped: paused" in r.getMessage()]
    assert len(skips) == 2
    assert {r.levelno for r in skips} == {logging.DEBUG}
