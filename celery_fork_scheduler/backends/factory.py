"""Choosing the claim backend from the settings and the broker URL."""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

from ..config import Settings
from .base import ClaimBackend
from .local import LocalBackend
from .redis_connection import client_from_url

#: URL schemes that name a Redis server (for ``fork_scheduler_redis_url`` or a Redis broker).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://", "redis+sentinel://")


def redis_url_for(app: Any, settings: Settings) -> str | None:
    """The Redis URL to claim through: the setting, else the broker's when it is Redis."""
    if settings.redis_url:
        return settings.redis_url
    broker = app.conf.broker_url
    if isinstance(broker, str) and broker.startswith("redis+socket://"):
        return "unix://" + broker.removeprefix("redis+socket://")
    if isinstance(broker, str) and broker.startswith(REDIS_SCHEMES):
        # Kombu's failover list "redis://a;redis://b": claims go to the first.
        return broker.split(";")[0] if broker.startswith(("redis://", "rediss://")) else broker
    return None


def create_backend(app: Any, settings: Settings, schedule_filename: str | None) -> ClaimBackend:
    """The Redis backend when a Redis URL is known, else the embedded single-replica one."""
    url = redis_url_for(app, settings)
    if url is not None:
        from .redis import RedisBackend

        return RedisBackend.from_url(
            url, settings, transport_options=app.conf.broker_transport_options
        )
    state = settings.state_filename or (
        f"{schedule_filename}.fork.json" if schedule_filename else None
    )
    return LocalBackend(state)


def redis_client_for(app: Any, settings: Settings) -> redis.Redis | RedisCluster | None:
    """A Redis client for the scheduler's keys, or ``None`` when no Redis is configured."""
    url = redis_url_for(app, settings)
    if url is None:
        return None
    return client_from_url(url, settings.redis_options, app.conf.broker_transport_options)
