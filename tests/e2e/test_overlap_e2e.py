"""Overlap ``buffer_all`` and ``terminate_other`` end to end: a real ``celery beat -S fork``
and a real ``celery worker`` on a real Redis; the slow task records its own start and end."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import write_project
from .test_singleton import (
    SKIPPED,
    beat_lines,
    max_concurrent,
    project,
    recorded_runs,
    shut_down,
    start_cluster,
    starts,
    wait_for_worker,
)

pytestmark = pytest.mark.e2e

BUFFER_ALL = """
app.conf.fork_scheduler_buffer_limit = 2
app.conf.beat_schedule = {
    "slow-queued": {
        "task": "slow",
        "schedule": every(1).seconds,
        "args": [2.5],
        "overlap": "buffer_all",
    },
}
"""


def test_buffer_all_runs_queued_slots_back_to_back_in_slot_order(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, project(BUFFER_ALL))
    client = redis.Redis.from_url(redis_url)
    workers, beats = start_cluster(
        module,
        workdir,
        {"TEST_BROKER_URL": redis_url},
        processes,
        beats=1,
        workers=1,
        concurrency=4,
    )
    wait_until(lambda: starts(client) >= 4, timeout=30, what="4 runs\n" + dump_logs(processes))
    stopped = shut_down(client, beats, workers, processes)
    runs = recorded_runs(client)
    logs = dump_logs(processes)
    assert max_concurrent(runs, stopped) == 1, (runs, logs)
    skipped = [(m["slot"], m["reason"]) for m in beat_lines(beats, SKIPPED)]
    queued = [slot for slot, reason in skipped if reason == "buffered"]
    # Slots come every second and a run takes 2.5 s: the queue fills up (2) and overflows.
    assert {reason for _, reason in skipped} == {"buffered", "buffer_full"}, logs
    # Every run after the first is a queued slot, taken in slot order, as soon as the
    # previous run ended.
    assert [run.slot for run in runs[1:]] == queued[: len(runs) - 1], (runs, queued, logs)
    for before, after in itertools.pairwise(runs):
        assert before.end is not None and 0 <= after.start - before.end < 1.0, (before, after)


TERMINATE_OTHER = """
app.conf.beat_schedule = {
    "slow-replaced": {
        "task": "slow",
        "schedule": every(3).seconds,
        "args": [30],
        "overlap": "terminate_other",
    },
}
"""


def test_terminate_other_kills_the_old_run_before_the_new_one_starts(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, project(TERMINATE_OTHER))
    client = redis.Redis.from_url(redis_url)
    env = {"TEST_BROKER_URL": redis_url}
    # Prefork: a revoke with terminate=True signals the pool process running the task.
    command = ["worker", "-l", "info", "-P", "prefork", "-c", "2", "-n", "w0@%h"]
    worker = CeleryProcess(module, command, cwd=workdir, log_path=workdir / "w0.log", env=env)
    beat = CeleryProcess.beat(module, cwd=workdir, workdir=workdir, env=env)
    processes.extend([worker, beat])
    worker.start()
    wait_for_worker(worker, processes)
    beat.start()
    wait_until(lambda: starts(client) >= 2, timeout=30, what="2 runs\n" + dump_logs(processes))
    beat.stop()
    history = [
        json.loads(raw) for raw in client.lrange("scheduler:{slow-replaced}:history", 0, -1)
    ]
    worker.kill()
    runs = recorded_runs(client)
    logs = dump_logs(processes)
    first, second = runs[:2]
    assert first.end is None, (runs, logs)  # killed mid-run
    revoked = [item for item in history if item["outcome"] == "revoked"]
    assert [item["task_id"] for item in revoked][-1:] == [first.task_id], (history, logs)
    assert "terminated" in revoked[-1]["error"], history
    # The new run started only once the old one was terminated and recorded.
    assert second.start >= revoked[-1]["at"] / 1e6, (runs, history, logs)
    assert max_concurrent(runs[1:], time.time()) == 1
