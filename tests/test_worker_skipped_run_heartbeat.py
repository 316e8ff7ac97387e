"""A run found busy (or capped) when it starts never takes a marker or cap place back.

Such a run sits in the worker's ``_runs`` from ``task_prerun`` to ``task_postrun`` beside the
run that holds the marker. When Redis restarts (and loses the marker, or brings back an older
one) the heartbeat gives markers and places back to the runs executing in that process; the
skipped run is not executing and must not take one: its end would free it, and the next slot
would start beside the run that is still executing. Noticed in round 52's closing note, fixed.

Real ``redis-server`` (a private one the test crashes and starts again, empty); the worker's
handlers and its heartbeat passes are driven by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from heartbeat_helpers import OnePass

from celery_fork_scheduler.ids import CAPPED_HEADER, ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import RedisServer
from celery_fork_scheduler.worker import WorkerHooks

KEYS = Keys("scheduler:")
TASK = "skipped_heartbeat.job"
FIRST, SECOND = "2026-03-02T10:00:00+00:00", "2026-03-02T10:00:01+00:00"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    made = [RedisServer().start()]
    yield made[0]
    for each in made:
        with contextlib.suppress(Exception):
            each.stop()


def make_app(url: str) -> Celery:
    app = Celery("skipped_heartbeat", broker="memory://", set_as_current=False)
    app.conf.update(fork_scheduler_redis_url=url, fork_scheduler_max_concurrent=1)

    @app.task(name=TASK, shared=False)
    def job() -> None:
        """The entry's task."""

    return app


def start(hooks: WorkerHooks, task: Any, task_id: str, headers: dict[str, Any]) -> None:
    """``task_prerun`` of a run (its request pushed, as Celery does before the body)."""
    task.push_request(id=task_id, headers=headers, **headers)
    hooks.on_prerun(task_id=task_id, task=task)


def restart_empty(server: RedisServer) -> RedisServer:
    """Redis crashes (SIGKILL, nothing saved) and starts again, empty, on the same port."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    return RedisServer(port=server.port).start()


@pytest.mark.parametrize("policy", ["singleton", "cap"])
def test_a_run_skipped_at_start_takes_nothing_back_after_a_restart(
    server: RedisServer, policy: str
) -> None:
    app = make_app(server.url)
    task = app.tasks[TASK]
    hooks = WorkerHooks(app)
    hooks._stopping.set()  # no background heartbeat thread: passes are driven below
    if policy == "singleton":
        extra: dict[str, Any] = {OVERLAP_HEADER: "skip"}
        holder = KEYS.running("e")
    else:
        extra = {CAPPED_HEADER: True}
        holder = KEYS.cap
    start(hooks, task, "first", {ENTRY_HEADER: "e", SLOT_HEADER: FIRST, **extra})
    start(hooks, task, "second", {ENTRY_HEADER: "e", SLOT_HEADER: SECOND, **extra})
    assert hooks._runs["second"].skipped, "the second run must find the first one holding"
    hooks._beat_hearts(OnePass())  # type: ignore[arg-type]  # records Redis's run_id

    again = restart_empty(server)
    try:
        hooks._beat_hearts(OnePass())  # type: ignore[arg-type]  # sees the restart
        client = redis.Redis.from_url(again.url, decode_responses=True)
        held = {client.get(holder)} if policy == "singleton" else set(client.zrange(holder, 0, -1))
        assert held == {"first"}, f"after the restart the marker/place is held by {held}"
    finally:
        again.stop()
