"""Building a redis-py client from a URL: redis, rediss (TLS), unix sockets, Sentinel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..errors import ConfigError

#: Defaults that keep a hung Redis from blocking beat forever; user options override them.
#: redis-py's own retries are off: the backend retries ``fork_scheduler_max_retries`` times.
CLIENT_DEFAULTS: Mapping[str, Any] = {
    "socket_timeout": 5.0,
    "socket_connect_timeout": 5.0,
    "health_check_interval": 30,
    "retry": Retry(NoBackoff(), 0),
}


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``**``, for logs and errors.

    Kombu's multi-host form (``sentinel://a;sentinel://b``) is masked host by host; a part
    that cannot be parsed is shown as its scheme only.
    """
    parts = []
    for part in url.split(";"):
        part = part.strip()
        try:
            parts.append(str(maybe_sanitize_url(part)))
        except ValueError:
            parts.append(f"{urlsplit(part).scheme}://***")
    return ";".join(parts)


def client_from_url(
    url: str,
    options: Mapping[str, Any] | None = None,
    transport_options: Mapping[str, Any] | None = None,
) -> redis.Redis | RedisCluster:
    """A client for ``url``; ``options`` are redis-py client keywords (``ssl_*`` and others).

    ``{"cluster": True}`` in ``options`` makes it a Redis Cluster client (any node's URL).

    ``sentinel://`` and ``redis+sentinel://`` URLs follow Kombu: several hosts joined by ``;``,
    the master name from ``master_name`` in ``options``, the query string or the broker's
    transport options.
    """
    settings = {**CLIENT_DEFAULTS, **(options or {})}
    if url.startswith(("sentinel://", "redis+sentinel://")):
        return _sentinel_master(url, settings, transport_options or {})
    try:
        if settings.pop("cluster", False):
            return RedisCluster.from_url(url, **settings)
        return redis.Redis.from_url(url, **settings)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"bad Redis URL {mask_url(url)}: {exc}", field="fork_scheduler_redis_url"
        ) from None


def _sentinel_master(
    url: str, settings: dict[str, Any], transport_options: Mapping[str, Any]
) -> redis.Redis:
    hosts: list[tuple[str, int]] = []
    password = username = None
    db = 0
    query: dict[str, str] = {}
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        if not parsed.hostname:
            continue
        hosts.append((parsed.hostname, parsed.port or 26379))
        password = password or (unquote(parsed.password) if parsed.password else None)
        username = username or (unquote(parsed.username) if parsed.username else None)
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
        query.update(parse_qsl(parsed.query))
    master_name = (
        settings.pop("master_name", None)
        or query.get("master_name")
        or transport_options.get("master_name")
    )
    if not hosts or not master_name:
        raise ConfigError(
            f"Sentinel URL {mask_url(url)} needs at least one host and a master_name",
            field="fork_scheduler_redis_url",
        )
    # The sentinels get the same timeouts and no-retry policy as the master connection.
    sentinel_kwargs = {
        key: settings[key]
        for key in ("socket_timeout", "socket_connect_timeout", "retry")
        if key in settings
    }
    sentinel_kwargs.update(
        settings.pop("sentinel_kwargs", None) or transport_options.get("sentinel_kwargs") or {}
    )
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **settings)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        master_name, db=db, password=password, username=username, **settings
    )
    return client
