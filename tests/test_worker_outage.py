"""The worker while the claims Redis is away: one warning per outage, no traceback (issue 17)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from celery import Celery

from celery_fork_scheduler.testing import free_port
from celery_fork_scheduler.worker import Run, WorkerHooks


@pytest.fixture
def hooks() -> Iterator[WorkerHooks]:
    app = Celery("outage", set_as_current=False, broker="memory://")
    app.conf.update(
        fork_scheduler_redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nobody listens there
        fork_scheduler_max_retries=0,
    )
    yield WorkerHooks(app)
    app.close()


def a_run(task_id: str) -> Run:
    return Run(
        entry="nightly",
        slot="2026-03-02T10:00:00+00:00",
        task_id=task_id,
        started=0.0,
        singleton=True,
        capped=False,
        worker="w1@host",
    )


def test_runs_ending_while_redis_is_away_log_one_warning_without_a_traceback(
    hooks: WorkerHooks, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler"):
        for number in range(5):
            run = a_run(f"task-{number}")
            hooks._record(run, "completed", "completed", duration=0.1)
            hooks._finish(run)
    warnings = [r for r in caplog.records if r.name.startswith("celery_fork_scheduler")]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "cannot reach Redis" in warnings[0].getMessage()
    assert warnings[0].exc_info is None
