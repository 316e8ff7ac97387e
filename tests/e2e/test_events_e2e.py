"""Worker-side events with a real worker and a real `celery beat -S fork`.

The project module calls ``install(app)`` and connects receivers to job_started, job_completed
and job_failed that push what they got to a Redis list. One entry succeeds, one raises.
"""

from __future__ import annotations

import collections
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import start_worker_and_beat, write_project

pytestmark = pytest.mark.e2e

PROJECT = """
import time

import celery_fork_scheduler
from celery_fork_scheduler import scheduled_slot, signals as fork_signals

app.conf.fork_scheduler_history_size = 1000
app.conf.beat_schedule = {
    "good-1s": {"task": "good", "schedule": every(1).seconds},
    "bad-2s": {"task": "bad", "schedule": every(2).seconds},
}
celery_fork_scheduler.install(app)


def _push(kind, **fields):
    slot = fields.get("slot")
    fields["slot_type"] = type(slot).__name__
    fields["slot"] = slot if isinstance(slot, str) else getattr(slot, "isoformat", str)()
    _recorder.rpush("test:events", json.dumps({"signal": kind, **fields}))


@fork_signals.job_started.connect
def _started(sender=None, entry=None, slot=None, task_id=None, **kwargs):
    _push("started", entry=entry, slot=slot, task_id=task_id, task=sender.name)


@fork_signals.job_completed.connect
def _completed(sender=None, entry=None, slot=None, task_id=None, duration=None, **kwargs):
    _push("completed", entry=entry, slot=slot, task_id=task_id, duration=duration)


@fork_signals.job_failed.connect
def _failed(sender=None, entry=None, slot=None, task_id=None, exception=None, **kwargs):
    _push("failed", entry=entry, slot=slot, task_id=task_id, exception=repr(exception))


def _inside(task):
    found = scheduled_slot(task.request)
    _recorder.rpush("test:inside", json.dumps({
        "entry": found.entry,
        "slot": found.slot.isoformat(),
        "header": task.request.get("fork_scheduler_slot"),
        "task_id": task.request.id,
    }))
    return found


@app.task(bind=True, name="good")
def good(self):
    _inside(self)
    time.sleep(0.02)


@app.task(bind=True, name="bad")
def bad(self):
    found = _inside(self)
    raise ValueError("boom at " + found.slot.isoformat())
"""


def read(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def test_job_signals_fire_once_per_run_and_agree_with_history_and_stats(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, PROJECT)
    worker, beat = start_worker_and_beat(module, workdir, redis_url, processes)
    client = redis.Redis.from_url(redis_url)

    def counts() -> collections.Counter[tuple[str, str]]:
        return collections.Counter((e["signal"], e["entry"]) for e in read(client, "test:events"))

    wait_until(
        lambda: counts()[("completed", "good-1s")] >= 3 and counts()[("failed", "bad-2s")] >= 2,
        timeout=90,
        what="3 completed and 2 failed runs\n" + dump_logs(processes),
    )
    beat.stop()
    wait_until(lambda: client.llen("celery") == 0, timeout=30, what="the queue to drain")

    def settled() -> bool:
        c = counts()
        started = c[("started", "good-1s")] + c[("started", "bad-2s")]
        ended = c[("completed", "good-1s")] + c[("failed", "bad-2s")]
        return started == ended

    wait_until(settled, timeout=30, what="every started run to end\n" + dump_logs(processes))
    worker.stop()

    events = read(client, "test:events")
    inside = {item["task_id"]: item for item in read(client, "test:inside")}
    by_task: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in events:
        by_task[event["task_id"]].append(event)
    assert set(by_task) == set(inside)
    for task_id, seen in by_task.items():
        entry = seen[0]["entry"]
        kinds = [e["signal"] for e in seen]
        assert kinds == (["started", "completed"] if entry == "good-1s" else ["started", "failed"])
        # the same slot everywhere: the signals, the header, scheduled_slot() in the task
        slot = seen[0]["slot"]
        assert {e["slot"] for e in seen} == {slot}
        assert {e["slot_type"] for e in seen} == {"str"}
        assert {e["entry"] for e in seen} == {entry}
        assert inside[task_id] == {
            "entry": entry,
            "slot": slot,
            "header": slot,
            "task_id": task_id,
        }
        assert task_id == task_id_for(entry, datetime.fromisoformat(slot))
        assert seen[0]["task"] == ("good" if entry == "good-1s" else "bad")
        end = seen[1]
        if entry == "good-1s":
            assert end["duration"] > 0
        else:
            assert end["exception"] == f"ValueError('boom at {slot}')"
    assert len({(e["entry"], e["slot"]) for e in events}) == len(by_task)  # one run per slot

    # what the Manager reads from Redis agrees with what the worker reported
    app = Celery("proj", broker=redis_url, set_as_current=False)
    app.conf.update(
        beat_schedule={
            "good-1s": {"task": "good", "schedule": every(1).seconds},
            "bad-2s": {"task": "bad", "schedule": every(2).seconds},
        },
    )
    manager = Manager(app)
    for entry, end_signal, outcome in (
        ("good-1s", "completed", "completed"),
        ("bad-2s", "failed", "error"),
    ):
        ended = {e["task_id"] for e in events if e["entry"] == entry and e["signal"] == end_signal}
        history = manager.history(entry, n=1000)
        assert {r.task_id for r in history if r.outcome == outcome} == ended
        assert len([r for r in history if r.outcome == outcome]) == len(ended)
        assert {r.task_id for r in history if r.outcome == "sent"} >= ended
        stats = manager.stats(entry)
        assert stats.completed == (len(ended) if outcome == "completed" else 0)
        assert stats.errors == (len(ended) if outcome == "error" else 0)
        assert stats.runs == len({r.task_id for r in history if r.outcome == "sent"})
        assert stats.failures == 0
    errors = [r for r in manager.history("bad-2s", n=1000) if r.outcome == "error"]
    assert all(r.error == f"ValueError: boom at {r.slot.isoformat()}" for r in errors)
    completed = [r for r in manager.history("good-1s", n=1000) if r.outcome == "completed"]
    assert all(r.duration is not None and r.duration > 0 for r in completed)
