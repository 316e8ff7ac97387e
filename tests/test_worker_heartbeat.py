"""The worker's heartbeat thread (it says in Redis that this worker frees singleton markers)
stops with its worker — also celery.contrib.testing's in-process worker, which stops without
``worker_shutdown`` — and starts again with the next worker of the app in the process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_fork_scheduler import Manager, every, install
from celery_fork_scheduler.keys import Keys

KEYS = Keys("scheduler:")


def heartbeats() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fork-scheduler-heartbeat"]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def make_app(redis_url: str) -> Celery:
    app = Celery("heartbeat", broker="memory://", set_as_current=False)
    app.conf.update(
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_singleton_lease=3,
        beat_schedule={"job": {"task": "tasks.job", "schedule": every(1).hours, "singleton": True}},
    )

    @app.task(name="tasks.job", shared=False)
    def job() -> None:
        """A singleton entry's task: its run starts the heartbeat."""

    install(app)
    return app


def test_an_in_process_worker_takes_its_heartbeat_with_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = make_app(redis_url)
    before = set(heartbeats())
    for _ in range(2):  # a second worker of the same app starts its own heartbeat again
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
            Manager(app).trigger("job")
            wait_for(lambda: redis_client.exists(KEYS.workers_seen) == 1)
            started = set(heartbeats()) - before
            assert len(started) == 1
        thread = started.pop()
        thread.join(timeout=30)
        assert not thread.is_alive()
        redis_client.delete(KEYS.workers_seen)
