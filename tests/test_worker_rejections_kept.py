"""A worker remembers a bounded number of rejected runs (``Reject(requeue=True)``).

A run rejected here and requeued starts again without a second ``job_started`` when this
process takes it again (tests/test_adversary_round45.py); one that another worker takes is
never seen here again, so the memory of rejections is bounded (``REJECTED_KEPT``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from hand_driven_helpers import HandDrivenWorker as Worker
from hand_driven_helpers import RecordingBeat as Beat
from replica_helpers import START

from celery_fork_scheduler import every
from celery_fork_scheduler import worker as worker_module
from celery_fork_scheduler.testing import FakeClock

TASK = "rejections.job"


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("rejections", broker=redis_url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        beat_schedule={"e": {"task": TASK, "schedule": every(1).seconds}},
        fork_scheduler_redis_url=redis_url,
        broker_connection_retry_on_startup=False,
    )

    @app.task(name=TASK, shared=False)
    def job(*args: Any, **kwargs: Any) -> None:
        """The entry's task."""

    yield app
    app.close()


def test_only_the_latest_rejections_are_remembered(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "REJECTED_KEPT", 2)
    clock = FakeClock(START)
    beat = Beat(app, clock)
    try:
        beat.run_until(clock() + timedelta(seconds=4))
        runs = [(o.task_id, dict(o.headers)) for o in beat.publisher.occurrences][:3]
    finally:
        beat.scheduler.close()
    assert len(runs) == 3
    worker = Worker(app, TASK)
    for task_id, headers in runs:
        assert worker.start(task_id, headers)
        worker.end(task_id, state="REJECTED")
    assert list(worker.hooks._rejected) == [runs[1][0], runs[2][0]]
