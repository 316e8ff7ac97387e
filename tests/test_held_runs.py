"""A held-back run handed the marker is published only once the hand-over is confirmed by the
replicas ``fork_scheduler_wait_replicas`` asks for (a real ``redis-server`` without replicas
confirms nothing)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import redis
from app_helpers import two_task_app

from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.held import HeldRuns
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import build_occurrence, occurrence_to_json

KEYS = Keys("scheduler:")
SLOT = datetime(2026, 12, 2, 7, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("wait_replicas", "published"), [(0, True), (1, False)])
def test_a_hand_over_the_replicas_did_not_confirm_is_held_back_again(
    redis_url: str, redis_client: redis.Redis, wait_replicas: int, published: bool
) -> None:
    app = two_task_app(
        "held_runs",
        redis_url,
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_wait_replicas=wait_replicas,
    )
    entry = entry_from_config(
        "sync",
        {"task": "tasks.cleanup", "schedule": 60, "overlap": "buffer_one"},
        default_timezone=timezone.utc,
    )
    task_id = task_id_for("sync", SLOT)
    held = occurrence_to_json(build_occurrence(entry, SLOT, task_id))
    # As RELEASE leaves it: the marker handed to the held run, the message taken, a run counted.
    redis_client.set(KEYS.running("sync"), task_id)
    redis_client.hset(KEYS.state("sync"), "runs", 2)
    runs = HeldRuns(app=app, client=redis_client, keys=KEYS, settings=read_settings(app.conf))
    runs.publish(held)
    queued = redis_client.llen("celery")
    if published:
        assert queued == 1
        assert redis_client.get(KEYS.running("sync")) == task_id.encode()
        assert redis_client.get(KEYS.buffered("sync")) is None
    else:  # not sent; held back again as if never handed over, the run given back
        assert queued == 0
        assert redis_client.get(KEYS.running("sync")) is None
        assert redis_client.get(KEYS.buffered("sync")) == held.encode()
        assert redis_client.hget(KEYS.state("sync"), "runs") == b"1"
        assert redis_client.llen(KEYS.history("sync")) == 0
