"""Building a redis-py client from a URL: redis, rediss (TLS), unix sockets, Sentinel."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
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


#: Schemes whose URL may list several hosts joined by ``;`` (Kombu's form).
MULTI_HOST_SCHEMES = ("sentinel://", "redis+sentinel://")

#: A URL's credentials in free text: ``scheme://[user:]secret@`` up to the line's last ``@``
#: (an unencoded ``@``, ``/``, ``#``, ``?`` or space in a password ends nothing early).
_CREDENTIALS_IN_TEXT = re.compile(r"(\b[a-z][a-z0-9+.\-]*://)([^:@\s/]*:)?[^\n]*@", re.IGNORECASE)
#: A secret passed as a query parameter (``?password=``, ``&sentinel_password=``, ``token=``).
_SECRET_PARAMETER = re.compile(
    r"([?&;][a-z_]*(?:pass(?:word)?|passwd|token|secret|auth)[a-z_]*=)[^&#\s]*", re.IGNORECASE
)
#: Where a Kombu multi-host URL starts its next host (``...;sentinel://b``).
_NEXT_HOST = re.compile(r";(?=\s*[a-z][a-z0-9+.\-]*://)", re.IGNORECASE)


def mask_url(url: object) -> str:
    """The URL with its password replaced by ``**``, for logs and errors.

    Everything between ``://`` and the URL's last ``@`` but the user name is hidden, so a
    password with unencoded ``;``, ``/``, ``#``, ``?`` or ``@`` never shows; a user name
    alone (``redis://secret@host``) is hidden too. Sentinel URLs listing several hosts
    (``sentinel://a;sentinel://b``) are masked host by host. A value that is not a string is
    shown as its type only.
    """
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    if url.startswith(MULTI_HOST_SCHEMES):
        return ";".join(_mask_one(part.strip()) for part in _NEXT_HOST.split(url))
    return _mask_one(url)


def _mask_one(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "***" if "@" in url else _SECRET_PARAMETER.sub(r"\1**", url)
    at = rest.rfind("@")
    if at < 0:
        return _SECRET_PARAMETER.sub(r"\1**", url)
    user, colon, _ = rest[:at].partition(":")
    shown = f"{user}:" if colon and "/" not in user else ""
    return f"{scheme}://{shown}**" + _SECRET_PARAMETER.sub(r"\1**", rest[at:])


def scrub_secrets(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced by ``**``, those in its query
    string (``?password=``) too (error messages, stored task errors, log lines)."""
    text = _CREDENTIALS_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}**@", text)
    return _SECRET_PARAMETER.sub(r"\1**", text)


def _bad_url(url: str, what: str, reason: object) -> ConfigError:
    """The error for a URL that cannot be used; the parser's words only when the URL carries
    no credentials (they may quote part of a password)."""
    if "@" in url:
        reason = (
            "it cannot be parsed; URL-encode special characters of the password "
            "(urllib.parse.quote(password, safe=''))"
        )
    return ConfigError(f"bad {what} {mask_url(url)}: {reason}", field="fork_scheduler_redis_url")


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
    if not isinstance(url, str):
        raise ConfigError(
            f"must be a URL string, not {mask_url(url)}", field="fork_scheduler_redis_url"
        )
    settings = {**CLIENT_DEFAULTS, **(options or {})}
    if url.startswith(MULTI_HOST_SCHEMES):
        return _sentinel_master(url, settings, transport_options or {})
    try:
        if settings.pop("cluster", False):
            return RedisCluster.from_url(url, **settings)
        return redis.Redis.from_url(url, **settings)
    except (ValueError, TypeError) as exc:
        raise _bad_url(url, "Redis URL", exc) from None


def _sentinel_master(
    url: str, settings: dict[str, Any], transport_options: Mapping[str, Any]
) -> redis.Redis:
    hosts: list[tuple[str, int]] = []
    password = username = None
    db = 0
    query: dict[str, str] = {}
    for part in url.split(";"):
        try:
            parsed = urlsplit(part.strip())
            if not parsed.hostname:
                continue
            hosts.append((parsed.hostname, parsed.port or 26379))
            if parsed.path.strip("/"):
                db = int(parsed.path.strip("/"))
        except ValueError as exc:
            raise _bad_url(url, "Sentinel URL", exc) from None
        password = password or (unquote(parsed.password) if parsed.password else None)
        username = username or (unquote(parsed.username) if parsed.username else None)
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
