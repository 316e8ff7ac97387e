"""The testing harness composes with Celery's own test fixtures (issue 17, docs/testing.md):
the fake clock decides what fires, an in-process worker (``celery.contrib.pytest``'s
``celery_app`` and ``celery.contrib.testing.worker.start_worker``) runs it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from celery_fork_scheduler import install
from celery_fork_scheduler.signals import job_completed, job_started
from celery_fork_scheduler.testing import ScheduleHarness
from celery_fork_scheduler.testing.delivery import send_occurrences


@pytest.fixture(scope="session")
def celery_config() -> dict[str, Any]:
    return {"broker_url": "memory://", "result_backend": "cache+memory://", "timezone": "UTC"}


def test_an_entry_driven_by_the_fake_clock_runs_on_an_in_process_worker(
    celery_app: Any, fork_scheduler_harness: Callable[..., ScheduleHarness]
) -> None:
    @celery_app.task(bind=True, name="reports.nightly")
    def nightly(self: Any, region: str) -> dict[str, Any]:
        return {"region": region, "slot": self.request.get("fork_scheduler_slot")}

    install(celery_app)
    celery_app.conf.beat_schedule = {
        "nightly-eu": {"task": "reports.nightly", "schedule": "daily at 02:00", "args": ("eu",)},
    }
    harness = fork_scheduler_harness(celery_app, start="2026-03-01T00:00:00Z")
    fired = harness.advance(hours=3)
    assert [o.slot.isoformat() for o in fired] == ["2026-03-01T02:00:00+00:00"]

    with start_worker(celery_app, pool="solo", perform_ping_check=False):
        results = send_occurrences(celery_app, fired)
        assert [result.get(timeout=10) for result in results] == [
            {"region": "eu", "slot": "2026-03-01T02:00:00+00:00"}
        ]


def test_the_documented_copy_is_this_test() -> None:
    here = Path(__file__).read_text()
    body = here[here.index('@pytest.fixture(scope="session")') : here.index("\n\n\ndef test_the_")]
    assert body in (Path(__file__).parent.parent / "docs" / "testing.md").read_text()


def test_worker_side_signals_of_a_harness_driven_run(
    celery_app: Any, fork_scheduler_harness: Callable[..., ScheduleHarness]
) -> None:
    """The worker hooks of install(app) see a run the harness fired: job_started and
    job_completed name its entry and slot (the worker-side path, in process)."""
    seen: list[tuple[str, str, str]] = []

    def record(signal: str) -> Callable[..., None]:
        def receiver(sender: Any = None, entry: str = "", slot: Any = None, **_: Any) -> None:
            seen.append((signal, entry, str(slot)))

        return receiver

    started, completed = record("started"), record("completed")
    job_started.connect(started)
    job_completed.connect(completed)

    @celery_app.task(name="reports.pulse")
    def pulse() -> None: ...

    install(celery_app)
    celery_app.conf.beat_schedule = {"pulse": {"task": "reports.pulse", "schedule": 60.0}}
    harness = fork_scheduler_harness(celery_app, start="2026-03-01T00:00:30Z")
    fired = harness.advance(minutes=1)
    try:
        with start_worker(celery_app, pool="solo", perform_ping_check=False):
            for result in send_occurrences(celery_app, fired):
                result.get(timeout=10)
    finally:
        job_started.disconnect(started)
        job_completed.disconnect(completed)
    slot = "2026-03-01T00:01:00+00:00"
    assert seen == [("started", "pulse", slot), ("completed", "pulse", slot)]
