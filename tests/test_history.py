"""Run history and counters in Redis, read back with ``Manager.history`` and ``Manager.stats``.

Two in-process replicas (fake clock, real Redis) run a schedule with sends, skips and publish
failures while the beat-side signals are recorded; history and counters must tell the same
story. The worker-side records (completed / error) are written by the worker hooks.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery
from celery.app.task import Context
from replica_helpers import BrokenPublisher

from celery_fork_scheduler import Manager, RunRecord, every, signals
from celery_fork_scheduler.ids import ENTRY_HEADER, SLOT_HEADER, task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock
from celery_fork_scheduler.worker import WorkerHooks

START = "2026-03-02T10:00:00.300+00:00"
SCHEDULE = {
    "ok": {"task": "t", "schedule": every(1).seconds},
    "paused": {"task": "t", "schedule": every(1).seconds},
    "broken": {"task": "t", "schedule": every(2).seconds},
    "limited": {"task": "t", "schedule": every(1).seconds, "max_runs": 2},
    "single": {"task": "t", "schedule": every(1).seconds, "singleton": True},
}


def slot(second: int) -> datetime:
    return datetime.fromisoformat(f"2026-03-02T10:00:{second:02}+00:00")


def broken_publisher() -> BrokenPublisher:
    return BrokenPublisher(lambda: LookupError("no queue named 'missing'"))


def make_app(redis_url: str, schedule: dict[str, Any] = SCHEDULE, **conf: Any) -> Celery:
    return replica_helpers.make_app(redis_url, schedule, main="history", **conf)


@pytest.fixture
def recorded() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    kinds = {
        "dispatched": signals.entry_dispatched,
        "skipped": signals.entry_skipped,
        "failed": signals.entry_failed,
    }
    for kind, signal in kinds.items():

        def receiver(sender: Any = None, signal: Any = None, _kind: str = kind, **kw: Any) -> None:
            sent.append((_kind, {"replica": sender.backend.replica_id, **kw}))

        signal.connect(receiver, weak=False, dispatch_uid=f"test-history-{kind}")
    yield sent
    for kind, signal in kinds.items():
        signal.disconnect(dispatch_uid=f"test-history-{kind}")


@pytest.fixture
def make_scheduler(redis_url: str) -> Iterator[Any]:
    """``make(app, clock, name)``: a replica of ``app`` whose publishes all fail."""
    with replica_helpers.schedulers(redis_url, monotonic=time.monotonic) as make:
        yield lambda app, clock, name: make(clock, name, app=app, publisher=broken_publisher())


def expected_records(
    recorded: list[tuple[str, dict[str, Any]]], entry: str
) -> collections.Counter[tuple[Any, ...]]:
    """The history items the signals imply for ``entry`` (a claim by another replica is none)."""
    items: collections.Counter[tuple[Any, ...]] = collections.Counter()
    for kind, args in recorded:
        if args["entry"] != entry:
            continue
        if kind == "dispatched":
            items[("sent", args["slot"], args["task_id"], args["replica"], "")] += 1
        elif kind == "failed":
            error = f"{type(args['exception']).__name__}: {args['exception']}"
            items[("failed", args["slot"], args["task_id"], args["replica"], error)] += 1
        elif args["reason"] != "claimed":
            task_id = task_id_for(entry, args["slot"])
            outcome = f"skipped:{args['reason']}"
            if outcome == "skipped:finished" and any(key[0] == outcome for key in items):
                continue  # recorded once: every replica is told, the first one writes it
            items[(outcome, args["slot"], task_id, args["replica"], "")] += 1
    return items


def as_items(records: list[RunRecord]) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter((r.outcome, r.slot, r.task_id, r.by, r.error) for r in records)


def test_history_and_stats_match_what_two_replicas_did(
    redis_url: str,
    redis_client: redis.Redis,
    make_scheduler: Any,
    recorded: list[tuple[str, dict[str, Any]]],
) -> None:
    app = make_app(redis_url, fork_scheduler_history_size=100)
    manager = Manager(app)
    manager.pause("paused")
    redis_client.set(Keys("scheduler:").running("single"), "previous-run", px=60_000)
    clock = FakeClock(START)
    first = make_scheduler(app, clock, "replica-1")
    second = make_scheduler(
        make_app(redis_url, fork_scheduler_history_size=100), clock, "replica-2"
    )
    end = clock.now + timedelta(seconds=4)
    while clock.now < end:
        # alternate which replica asks first each second, so that both win some slots
        for scheduler in (first, second) if clock.now.second % 2 else (second, first):
            scheduler.tick()
        clock.advance(0.25)

    kinds = collections.Counter(kind for kind, _ in recorded)
    assert kinds["dispatched"] and kinds["skipped"] and kinds["failed"]
    for entry in SCHEDULE:
        history = manager.history(entry, n=1000)
        assert as_items(history) == expected_records(recorded, entry), entry
        assert [r.at for r in history] == sorted((r.at for r in history), reverse=True)
        assert all(r.duration is None for r in history)

        stats = manager.stats(entry)
        mine = [(kind, args) for kind, args in recorded if args["entry"] == entry]
        sent_slots = {a["slot"] for kind, a in mine if kind == "dispatched"}
        # a slot whose publish failed is no run (round 66: RECORD_FAILURE gives it back)
        assert stats.runs == len(sent_slots)
        assert stats.failures == sum(kind == "failed" for kind, _ in mine)
        skips = collections.Counter(
            a["reason"] for kind, a in mine if kind == "skipped" and a["reason"] != "claimed"
        )
        if skips["finished"]:
            skips["finished"] = 1
        assert stats.skips == dict(skips)
        assert (stats.completed, stats.errors) == (0, 0)

    ok = manager.history("ok", n=1000)
    assert sorted(r.slot for r in ok) == [slot(s) for s in (1, 2, 3, 4)]
    assert {r.by for r in ok} == {"replica-1", "replica-2"}
    assert manager.stats("paused").skips == {"paused": 4}
    assert manager.stats("single").skips == {"busy": 4}
    assert manager.stats("limited").runs == 2
    assert manager.stats("limited").skips == {"finished": 1}
    broken = manager.history("broken", n=1000)
    assert {r.outcome for r in broken} == {"failed"}
    assert {r.error for r in broken} == {"LookupError: no queue named 'missing'"}
    assert manager.stats("broken").failures >= 2


def test_a_capped_slot_is_given_back_and_recorded_as_skipped(
    redis_url: str, make_scheduler: Any
) -> None:
    schedule = {
        "a": {"task": "t", "schedule": every(1).seconds},
        "b": {"task": "t", "schedule": every(1).seconds},
    }
    app = make_app(redis_url, schedule, fork_scheduler_max_concurrent=1)
    clock = FakeClock(START)
    scheduler = make_scheduler(app, clock, "replica-1")
    clock.advance(1)
    scheduler.tick()
    manager = Manager(app)
    stats = {name: manager.stats(name) for name in schedule}
    assert sorted((s.runs, dict(s.skips)) for s in stats.values()) == [
        (0, {"capped": 1}),
        (1, {}),
    ]
    loser = next(name for name, s in stats.items() if s.skips)
    [record] = manager.history(loser)
    assert (record.outcome, record.slot, record.by) == ("skipped:capped", slot(1), "replica-1")
    assert record.task_id == task_id_for(loser, slot(1))


def run_ok_every_second(
    redis_url: str, make_scheduler: Any, history_size: int, seconds: int
) -> Manager:
    """One replica runs a lone every-second entry "ok" for ``seconds`` ticks."""
    schedule = {"ok": {"task": "t", "schedule": every(1).seconds}}
    app = make_app(redis_url, schedule, fork_scheduler_history_size=history_size)
    clock = FakeClock(START)
    scheduler = make_scheduler(app, clock, "replica-1")
    for _ in range(seconds):
        clock.advance(1)
        scheduler.tick()
    return Manager(app)


def test_the_history_is_capped_newest_first(redis_url: str, make_scheduler: Any) -> None:
    manager = run_ok_every_second(redis_url, make_scheduler, history_size=3, seconds=5)
    assert [r.slot for r in manager.history("ok")] == [slot(5), slot(4), slot(3)]
    assert [r.slot for r in manager.history("ok", n=2)] == [slot(5), slot(4)]
    assert manager.stats("ok").runs == 5


def test_a_history_size_of_zero_keeps_only_the_counters(
    redis_url: str, make_scheduler: Any
) -> None:
    manager = run_ok_every_second(redis_url, make_scheduler, history_size=0, seconds=3)
    assert manager.history("ok") == []
    assert manager.stats("ok").runs == 3


class StubTask:
    """What the worker hooks read of a task: its app and request."""

    def __init__(self, app: Celery, entry: str, slot_text: str, task_id: str) -> None:
        self.app = app
        self.request = Context(
            {ENTRY_HEADER: entry, SLOT_HEADER: slot_text, "id": task_id, "hostname": "w1@host"}
        )


def test_worker_outcomes_are_counted_and_kept_with_duration_and_error(redis_url: str) -> None:
    schedule = {"ok": {"task": "t", "schedule": every(1).seconds}}
    app = make_app(redis_url, schedule)
    hooks = WorkerHooks(app)
    good_id, bad_id = task_id_for("ok", slot(1)), task_id_for("ok", slot(2))
    good = StubTask(app, "ok", slot(1).isoformat(), good_id)
    bad = StubTask(app, "ok", slot(2).isoformat(), bad_id)
    hooks.on_prerun(good_id, good)
    hooks.on_postrun(good_id, good, state="SUCCESS")
    hooks.on_prerun(bad_id, bad)
    hooks.on_failure(sender=bad, task_id=bad_id, exception=KeyError("missing"))
    hooks.on_postrun(bad_id, bad, state="FAILURE")

    manager = Manager(app)
    error, completed = manager.history("ok")
    assert (completed.outcome, completed.slot, completed.task_id, completed.by) == (
        "completed",
        slot(1),
        good_id,
        "w1@host",
    )
    assert completed.duration is not None and completed.duration >= 0
    assert (error.outcome, error.slot, error.task_id) == ("error", slot(2), bad_id)
    assert error.error == "KeyError: 'missing'"
    stats = manager.stats("ok")
    assert (stats.completed, stats.errors, stats.runs) == (1, 1, 0)
