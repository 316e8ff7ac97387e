"""``pause_on_failure`` on real processes: a ``celery worker`` pauses the entry after its
first failed run, and ``celery beat`` skips every later slot as ``paused``."""

from __future__ import annotations

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
app.conf.beat_schedule = {
    "boom-1s": {"task": "boom", "schedule": every(1).seconds, "pause_on_failure": True},
}


@app.task(bind=True, name="boom")
def boom(self):
    _recorder.rpush("test:boom", self.request.id)
    raise ValueError("boom")


import celery_fork_scheduler

celery_fork_scheduler.install(app)
"""


def test_the_first_failure_pauses_the_entry_and_beat_skips_its_later_slots(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, PROJECT)
    env = {"TEST_BROKER_URL": redis_url}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    worker = CeleryProcess.worker(module, cwd=workdir, workdir=workdir, env=env, concurrency=1)
    beat = CeleryProcess.beat(module, cwd=workdir, workdir=workdir, env=env)
    processes.extend([worker, beat])
    worker.start()
    wait_until(
        lambda: " ready." in worker.log(),
        timeout=20,
        what="the worker to be ready\n" + dump_logs(processes),
    )
    beat.start()
    state = KEYS.state("boom-1s")
    wait_until(
        lambda: client.hget(state, "paused") == "1",
        timeout=20,
        what="the entry to be paused\n" + dump_logs(processes),
    )
    wait_until(
        lambda: int(client.hget(state, "skips:paused") or 0) >= 2,
        timeout=10,
        what="two slots skipped as paused\n" + dump_logs(processes),
    )
    beat.stop()

    ran = client.lrange("test:boom", 0, -1)
    assert len(ran) == 1, dump_logs(processes)
    assert client.hget(state, "runs") == "1"
    assert client.hget(state, "pause_note") == (
        f"paused on failure: task {ran[0]} raised ValueError('boom')"
    )
    history = [json.loads(raw) for raw in client.lrange(KEYS.history("boom-1s"), 0, -1)]
    failure = next(item for item in history if item["outcome"] == "error")
    assert failure["task_id"] == ran[0]
    assert failure["note"] == client.hget(state, "pause_note")
    assert "boom-1s paused for every replica" in worker.log()
