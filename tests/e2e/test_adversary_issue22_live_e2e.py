"""Adversarial e2e for issue 22 on real ``celery beat`` / ``celery worker`` processes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import write_project

pytestmark = pytest.mark.e2e

KEYS = Keys("scheduler:")

PROJECT = """
app.conf.task_acks_late = True
app.conf.task_reject_on_worker_lost = True
app.conf.beat_schedule = {
    "dies": {
        "task": "dies",
        "schedule": every(2).seconds,
        "pause_on_failure": True,
        "overlap": "skip",
    },
}


# This one task opts out of the app-wide requeue: a lost process is its final failure.
@app.task(bind=True, name="dies", reject_on_worker_lost=False)
def dies(self):
    _recorder.rpush("test:dies", self.request.id)
    os._exit(1)


from celery.signals import task_failure


@task_failure.connect
def _seen(task_id=None, exception=None, **_):
    _recorder.rpush("test:task_failure", f"{task_id} {type(exception).__name__}")


import celery_fork_scheduler

celery_fork_scheduler.install(app)
"""


def test_a_lost_process_of_a_task_that_is_not_requeued_pauses_the_entry(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    """docs/schedules.md "## Pause on failure": "Only a run's final failure counts (Celery's
    ``task_failure``: ... or the prefork pool ... lost its process)"; docs/singleton.md
    "Release": the marker is freed on "the ``task_failure`` that the worker's main process
    sends" (never after "a rejection that requeues the message").

    Ordinary configuration: the app sets ``task_acks_late`` and ``task_reject_on_worker_lost``;
    one task overrides it with ``reject_on_worker_lost=False`` (Celery's per-task option), so
    a lost process is its final failure: Celery does not requeue it and sends
    ``task_failure``. Observed: the hooks decide "requeued" from the *app* setting only and
    ignore that ``task_failure``: no ``errors``, no pause, and the singleton's marker is
    left to its lease."""
    module = write_project(workdir, PROJECT)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    env = {"TEST_BROKER_URL": redis_url}
    command = ["worker", "-l", "info", "-P", "prefork", "-c", "1", "-n", "w0@%h"]
    worker = CeleryProcess(module, command, cwd=workdir, log_path=workdir / "w0.log", env=env)
    beat = CeleryProcess.beat(module, cwd=workdir, workdir=workdir, env=env)
    processes.extend([worker, beat])
    worker.start()
    wait_until(
        lambda: " ready." in worker.log(), timeout=20, what="worker\n" + dump_logs(processes)
    )
    beat.start()
    wait_until(
        lambda: client.llen("test:task_failure") >= 1,
        timeout=15,
        what="Celery's task_failure for the lost process\n" + dump_logs(processes),
    )
    assert "WorkerLostError" in client.lindex("test:task_failure", 0)
    state = KEYS.state("dies")
    # The worker records a failure in the same handler, at once: allow it a generous while.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: client.hget(state, "paused") == "1", timeout=6, what="the pause")
    beat.stop()
    history = [json.loads(raw) for raw in client.lrange(KEYS.history("dies"), 0, -1)]
    assert client.hget(state, "paused") == "1", (
        client.hgetall(state),
        history,
        dump_logs(processes),
    )
