"""Testing support for applications that use celery-fork-scheduler."""

from __future__ import annotations

from .processes import CeleryProcess, wait_until
from .redis_server import RedisServer, find_redis_server, free_port

__all__ = ["CeleryProcess", "RedisServer", "find_redis_server", "free_port", "wait_until"]
