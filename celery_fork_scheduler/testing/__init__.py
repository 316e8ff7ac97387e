"""Testing support for applications that use celery-fork-scheduler."""

from __future__ import annotations

from .clock import FakeClock
from .harness import ScheduleHarness, assert_fires, assert_never_fires
from .processes import CeleryProcess, wait_until
from .recording import RecordingPublisher
from .redis_server import RedisServer, find_redis_server, free_port, redis_url_from_env

__all__ = [
    "CeleryProcess",
    "FakeClock",
    "RecordingPublisher",
    "RedisServer",
    "ScheduleHarness",
    "assert_fires",
    "assert_never_fires",
    "find_redis_server",
    "free_port",
    "redis_url_from_env",
    "wait_until",
]
