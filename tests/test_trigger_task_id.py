"""A manual run's task id is its own, even when it is triggered at a slot's very microsecond.

Found while reviewing round 47's fix (backfill reads history items of the slot's own task id):
``trigger`` made its id as a scheduled slot's, ``task_id_for(name, now)``, so a trigger at
exactly a slot's instant (a coarse clock, an injected one) shared the slot's id. The slot's
backfill then took the manual run for the slot's own run and never sent it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from hand_driven_helpers import HandDrivenWorker as Worker
from hand_driven_helpers import RecordingBeat as Beat
from hand_driven_helpers import queued
from replica_helpers import START

from celery_fork_scheduler import Manager, task_id_for
from celery_fork_scheduler.testing import FakeClock

TASK = "triggerid.job"
START_AT = datetime.fromisoformat(START).replace(microsecond=0)  # 10:00:00 UTC


def at(seconds: float) -> datetime:
    return START_AT + timedelta(seconds=seconds)


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("triggerid", broker=redis_url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        beat_schedule={"minutely": {"task": TASK, "schedule": "* * * * *"}},
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_owner_grace=0,
        result_expires=None,
        broker_connection_retry_on_startup=False,
    )

    @app.task(name=TASK, shared=False)
    def job(*args: Any, **kwargs: Any) -> None:
        """The entry's task."""

    yield app
    app.close()


def test_a_trigger_at_a_slots_microsecond_has_a_task_id_of_its_own(app: Celery) -> None:
    clock = FakeClock(at(60))
    result = Manager(app, clock=clock).trigger("minutely")
    assert result.task_id is not None
    assert result.task_id != task_id_for("minutely", at(60))


def test_a_trigger_at_a_slots_instant_keeps_a_singletons_scheduled_run_out(
    app: Celery, redis_client: redis.Redis
) -> None:
    """Singleton entry: the operator triggers it at exactly 10:01:00 and the manual run starts;
    the 10:01 slot falls due while it executes. Promise (docs/singleton.md): no overlapping
    runs. Before: the slot's claim found the running marker holding its own task id, so the
    slot was published and started beside the manual run."""
    app.conf.beat_schedule = {
        "minutely": {"task": TASK, "schedule": "* * * * *", "singleton": True}
    }
    clock = FakeClock(START)
    beat = Beat(app, clock)
    try:
        worker = Worker(app, TASK)
        manager = Manager(app, clock=clock)
        beat.run_until(at(59.9))
        for earlier in beat.publisher.occurrences:  # runs before 10:01 end
            if worker.start(earlier.task_id, dict(earlier.headers)):
                worker.end(earlier.task_id)
        redis_client.delete("celery")
        clock.now = at(60)
        manual = manager.trigger("minutely")
        assert manual.task_id is not None
        [message] = queued(redis_client)
        assert worker.start(manual.task_id, message["headers"])
        beat.run_until(at(61))
        scheduled = [o for o in beat.publisher.occurrences if o.slot == at(60)]
        started = [o for o in scheduled if worker.start(o.task_id, dict(o.headers))]
    finally:
        beat.scheduler.close()
    assert started == [], f"the 10:01 slot ran beside the manual run: {started}"


def test_two_triggers_at_one_instant_have_task_ids_of_their_own(app: Celery) -> None:
    """Two triggers at the same clock instant (an injected clock, two processes in one
    microsecond) are two runs: they must not share a task id (noticed in round 52's note)."""
    manager = Manager(app, clock=FakeClock(at(30)))
    first, second = manager.trigger("minutely"), manager.trigger("minutely")
    assert first.task_id is not None and second.task_id is not None
    assert first.task_id != second.task_id
