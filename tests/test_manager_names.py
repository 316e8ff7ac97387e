"""What the names carried over from the original design do exactly (docs/manager.md, issue 17)."""

from __future__ import annotations

import redis
from celery import Celery

from celery_fork_scheduler import Manager, RedisLocker, RedisLockerOptions


def test_with_distributed_locker_uses_its_connection_and_the_scheduler_prefix(
    redis_client: redis.Redis,
) -> None:
    app = Celery("names", broker="memory://", set_as_current=False)  # no Redis configured
    locker = RedisLocker(redis_client, RedisLockerOptions(key_prefix="locks-elsewhere:"))
    manager = Manager(app).with_distributed_locker(locker)
    manager.every(5).minutes.name("report").do("proj.report")
    keys = {key.decode() for key in redis_client.keys("*")}
    assert keys and all(key.startswith("scheduler:") for key in keys), keys
    assert manager.get("report").name == "report"


def test_singleton_mode_applies_to_jobs_added_afterwards(redis_url: str) -> None:
    app = Celery("names", broker=redis_url, set_as_current=False)
    manager = Manager(app)
    before = manager.every(5).minutes.name("before").do("proj.report")
    after = manager.singleton_mode().every(5).minutes.name("after").do("proj.report")
    assert (before.overlap, after.overlap) == ("allow", "skip")
