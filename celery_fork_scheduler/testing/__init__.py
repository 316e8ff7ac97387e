"""Testing support for applications that use celery-fork-scheduler."""

from __future__ import annotations

from .redis_server import RedisServer, find_redis_server, free_port

__all__ = ["RedisServer", "find_redis_server", "free_port"]
