"""Building a redis-py client from a URL: redis, rediss (TLS), unix sockets, Sentinel."""

from __future__ import annotations

import difflib
import inspect
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import SplitResult, parse_qs, parse_qsl, unquote, urlsplit

import redis
import redis.connection
from redis.backoff import NoBackoff
from redis.cluster import REDIS_ALLOWED_KEYS, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..errors import ConfigError
from .packing import packer_options

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
#: (an unencoded ``@``, ``/``, ``#``, ``?`` or blank in a password ends nothing early), but not
#: the ``@user_script:`` of a Lua error quoted after a URL. A scheme right after other letters
#: (``无法连接redis://``, ``URL=redis://``) is found too: nothing is asked of what precedes it.
_CREDENTIALS_IN_TEXT = re.compile(
    r"([a-z][a-z0-9+.\-]*://)([^:@\s/]*:)?[^\n]*@(?!user_script:)", re.IGNORECASE
)
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


def _bad_url(url: str, what: str, reason: object, *, quotes_url: bool = True) -> ConfigError:
    """The error for a URL that cannot be used; the parser's words only when the URL carries
    no credentials (they may quote part of a password). ``quotes_url=False``: ``reason``
    quotes nothing of the URL, so it is kept."""
    if "@" in url and quotes_url:
        reason = (
            "it cannot be parsed; URL-encode special characters of the password "
            "(urllib.parse.quote(password, safe=''))"
        )
    return ConfigError(f"bad {what} {mask_url(url)}: {reason}", field="fork_scheduler_redis_url")


# -- fork_scheduler_redis_options ---------------------------------------------------------------

#: The settings problems of the client options are reported against.
OPTIONS_SETTING = "fork_scheduler_redis_options"
URL_SETTING = "fork_scheduler_redis_url"
#: The package's own keys: ``cluster`` picks a Redis Cluster client; ``master_name`` and
#: ``sentinel_kwargs`` configure Sentinel (``sentinel://`` URLs only). Not redis-py keywords.
OWN_OPTIONS = ("cluster", "master_name", "sentinel_kwargs")
SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs")


def _keywords(*functions: Callable[..., Any]) -> frozenset[str]:
    """The names the functions take as keyword arguments (their ``**kwargs`` aside)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(
        parameter.name
        for function in functions
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind in named and parameter.name != "self"
    )


#: What ``redis.Redis.from_url`` passes on for each scheme: the pool's and the connection's
#: keywords (anything else is a ``TypeError`` at the first command).
_POOL_KEYWORDS = _keywords(
    redis.ConnectionPool.__init__, redis.connection.AbstractConnection.__init__
) | {"single_connection_client"}
FROM_URL_KEYWORDS: Mapping[str, frozenset[str]] = {
    "redis": _POOL_KEYWORDS | _keywords(redis.connection.Connection.__init__),
    "rediss": _POOL_KEYWORDS
    | _keywords(redis.connection.Connection.__init__, redis.connection.SSLConnection.__init__),
    "unix": _POOL_KEYWORDS | _keywords(redis.connection.UnixDomainSocketConnection.__init__),
}
#: Every option some client of the package takes: redis-py's (plain, TLS, unix socket,
#: cluster) and the package's own.
KNOWN_OPTIONS = frozenset().union(
    *FROM_URL_KEYWORDS.values(),
    _keywords(redis.Redis.__init__, RedisCluster.__init__),
    REDIS_ALLOWED_KEYS,
    OWN_OPTIONS,
)
#: The options only a Redis Cluster client takes.
CLUSTER_ONLY_OPTIONS = _keywords(RedisCluster.__init__) - _keywords(redis.Redis.__init__)
#: The values redis-py accepts for ``ssl_cert_reqs`` given as text.
CERT_REQS = ("none", "optional", "required")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: What the value of each option that has a clear type must be: a test and its description.
VALUE_CHECKS: Mapping[str, tuple[Callable[[object], bool], str]] = {
    **dict.fromkeys(
        ("socket_timeout", "socket_connect_timeout"),
        (
            lambda v: _number(v) and 0 < v <= 86_400,  # type: ignore[operator]
            "a number of seconds above 0 and at most 86400 (None would let a hung Redis block "
            "beat)",
        ),
    ),
    "health_check_interval": (
        lambda v: _number(v) and 0 <= v <= 86_400,  # type: ignore[operator]
        "a number of seconds from 0 to 86400",
    ),
    "max_connections": (
        lambda v: v is None or (_whole(v) and v > 0),  # type: ignore[operator]
        "a whole number above 0, or None",
    ),
    "db": (lambda v: _whole(v) and v >= 0, "a whole number, 0 or more"),  # type: ignore[operator]
    **dict.fromkeys(
        (
            "cluster",
            "socket_keepalive",
            "retry_on_timeout",
            "ssl_check_hostname",
            "single_connection_client",
            "read_from_replicas",
            "require_full_coverage",
        ),
        (lambda v: isinstance(v, bool), "True or False"),
    ),
    "ssl_cert_reqs": (
        lambda v: v is None or isinstance(v, ssl.VerifyMode) or v in CERT_REQS,
        "'none', 'optional', 'required', an ssl.VerifyMode or None",
    ),
    **dict.fromkeys(
        (
            "password",
            "username",
            "client_name",
            "ssl_keyfile",
            "ssl_certfile",
            "ssl_ca_certs",
            "ssl_ca_path",
            "ssl_password",
        ),
        (lambda v: v is None or isinstance(v, str), "a string or None"),
    ),
    "master_name": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "sentinel_kwargs": (
        lambda v: v is None or isinstance(v, Mapping),
        "a dict of options for the connections to the Sentinels, or None",
    ),
    "retry": (lambda v: v is None or isinstance(v, Retry), "a redis.retry.Retry or None"),
}


def _options_error(message: str, field: str = OPTIONS_SETTING) -> ConfigError:
    return ConfigError(message, field=field)


def _shown_value(key: str, value: object) -> str:
    """The value for an error message: only its type for a secret (a password)."""
    if _SECRET_PARAMETER.search(f"?{key}=") or not isinstance(value, (int, float, str, type(None))):
        return f"a value of type {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown(key: str, what: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "see redis-py's redis.Redis for the options"
    return f"unknown {what} {key!r}; {hint}"


def check_client_options(options: object) -> dict[str, Any]:
    """``fork_scheduler_redis_options`` checked: a dict of the options redis-py's clients
    take (a typo names the closest one) or the package's own (``cluster``, ``master_name``,
    ``sentinel_kwargs``), with values of the right type where the type is clear. Which
    options fit which URL is checked when the client is built (:func:`client_from_url`)."""
    if not isinstance(options, Mapping):
        raise _options_error(f"must be a dict of client options, not {type(options).__name__}")
    for key, value in options.items():
        if not isinstance(key, str):
            raise _options_error(f"option names must be strings, not {_shown_value('', key)}")
        if key not in KNOWN_OPTIONS:
            raise _options_error(_unknown(key, "option", KNOWN_OPTIONS))
        if key == "command_packer":
            raise _options_error(
                "option 'command_packer' is set by the scheduler (hiredis, see "
                "celery_fork_scheduler.backends.packing): leave it out"
            )
        test, expected = VALUE_CHECKS.get(key, (lambda _: True, ""))
        if not test(value):
            raise _options_error(
                f"option {key!r} must be {expected}, not {_shown_value(key, value)}"
            )
    return dict(options)


def _check_options_fit(url: str, options: Mapping[str, Any], field: str = OPTIONS_SETTING) -> None:
    """Refuse options the client built for ``url`` would reject at its first command
    (``field``: where they come from, the setting or the URL's query string)."""
    scheme = url.partition("://")[0].lower()
    cluster = options.get("cluster", False)
    if url.startswith(MULTI_HOST_SCHEMES):
        if cluster:
            raise _options_error(
                f"'cluster' cannot be used with a {scheme}:// (Sentinel) URL", field
            )
        return
    for key in SENTINEL_OPTIONS:
        if key in options:
            raise _options_error(
                f"{key!r} is a Sentinel option: it needs a sentinel:// URL listing the "
                f"Sentinels (sentinel://host:26379;sentinel://host2:26379), not a {scheme}:// URL",
                field,
            )
    accepted = FROM_URL_KEYWORDS.get(scheme)
    if cluster or accepted is None or "connection_class" in options:
        return
    for key in sorted(set(options) - accepted - {"cluster"}):
        if key == "ssl":
            reason = "TLS is chosen by the URL: use a rediss:// URL instead of 'ssl'"
        elif key.startswith("ssl_"):
            reason = f"TLS options need a rediss:// URL, not {scheme}://"
        elif key in CLUSTER_ONLY_OPTIONS:
            reason = "a Redis Cluster option: it needs 'cluster': True"
        else:
            reason = f"it does not apply to a {scheme}:// URL"
        raise _options_error(f"option {key!r}: {reason}", field)


def _password_spills(url: str, parts: SplitResult) -> bool:
    """True when an ``@`` of the URL lies outside its host part: an unencoded special
    character of the password split it, and parts of the URL may hold the password."""
    return url.count("@") != parts.netloc.count("@")


def _check_url(url: str) -> set[str]:
    """Refuse what redis-py would ignore or reject only at the first command: a database
    that is not a number (silently 0), an unknown query parameter, a bad ``ssl_cert_reqs``.
    Nothing of the URL is quoted (it may hold a password); a query parameter's name is.
    Returns the names of the query parameters (options for the client too)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()  # redis-py says why
    if _password_spills(url, parts):
        return set()
    scheme = parts.scheme.lower()
    database = unquote(parts.path).strip("/")
    if scheme in ("redis", "rediss") and not re.fullmatch(r"[0-9]*", database):
        raise _bad_url(
            url,
            "Redis URL",
            "the database (the path after the host) must be a number, such as /0",
            quotes_url=False,
        )
    query = parse_qs(parts.query)
    known = KNOWN_OPTIONS - set(OWN_OPTIONS)
    for key in query:
        if key not in known:
            reason = (
                _unknown(key, "query parameter", known)
                if key.isidentifier()
                else "a query parameter is not a redis-py option"
            )
            raise _bad_url(url, "Redis URL", reason, quotes_url=False)
    if any(value not in CERT_REQS for value in query.get("ssl_cert_reqs", [])):
        raise _bad_url(
            url,
            "Redis URL",
            "ssl_cert_reqs must be one of " + ", ".join(CERT_REQS),
            quotes_url=False,
        )
    return set(query)


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
    options = check_client_options(options or {})
    if url.startswith(MULTI_HOST_SCHEMES):
        _check_options_fit(url, options)
        return _sentinel_master(url, {**CLIENT_DEFAULTS, **options}, transport_options or {})
    in_query = dict.fromkeys(_check_url(url), True)
    _check_options_fit(url, options)
    _check_options_fit(url, {**in_query, "cluster": options.get("cluster", False)}, URL_SETTING)
    settings = {**CLIENT_DEFAULTS, **options}
    try:
        if settings.pop("cluster", False):
            return _cluster_client(url, settings)
        return redis.Redis.from_url(url, **packer_options(), **settings)
    except (ValueError, TypeError) as exc:
        raise _bad_url(url, "Redis URL", exc) from None


#: How redis-py starts the error of a cluster client that found no usable node.
_NO_CLUSTER_NODE = "Please provide at least one reachable node: "


def _cluster_client(url: str, settings: Mapping[str, Any]) -> RedisCluster:
    """A Redis Cluster client (it connects at once); a Redis that cannot be used as a cluster
    (unreachable, or not a cluster) is a :class:`redis.ConnectionError` naming the option."""
    try:
        return RedisCluster.from_url(url, **settings)
    except RedisClusterException as exc:
        reason = str(exc).rpartition(_NO_CLUSTER_NODE)[2] or type(exc).__name__
        raise redis.ConnectionError(
            f"not usable as a Redis Cluster ({OPTIONS_SETTING} has 'cluster': True): "
            f"{scrub_secrets(reason)}"
        ) from None


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
    sentinel_kwargs: dict[str, Any] = {
        key: settings[key]
        for key in ("socket_timeout", "socket_connect_timeout", "retry")
        if key in settings
    }
    sentinel_kwargs.update(
        settings.pop("sentinel_kwargs", None) or transport_options.get("sentinel_kwargs") or {}
    )
    # (through Any: redis-py 8.1 has no types here, 8.2 has some; either passes mypy)
    sentinel_class: Any = Sentinel
    sentinel = sentinel_class(hosts, sentinel_kwargs=sentinel_kwargs, **settings)
    client: redis.Redis = sentinel.master_for(
        master_name, db=db, password=password, username=username, **settings
    )
    return client
