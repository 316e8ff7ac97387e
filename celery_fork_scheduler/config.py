"""The ``fork_scheduler_*`` settings: read once from the Celery app, validated, frozen."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from .durations import to_timedelta
from .errors import ConfigError, ScheduleError
from .exclusions import ExclusionError, calendars_from_setting
from .schedules.base import to_zone

SETTING_PREFIX = "fork_scheduler_"

logger = logging.getLogger("celery_fork_scheduler")

#: The ``app.conf`` of each app a worker of this process runs (added from ``worker_init`` by
#: ``install(app)``): a bad ``fork_scheduler_*`` setting of theirs is logged once and its
#: default used, never raised, so that a scheduler setting cannot take the workers down. Beat
#: and the CLI stay strict.
_lenient: list[Mapping[str, Any]] = []
#: The problems already logged in this process (each is logged once).
_reported: set[str] = set()


def tolerate_bad_settings(conf: Mapping[str, Any]) -> None:
    """Make the settings of ``conf`` (a worker's app) log problems once instead of raising."""
    if not any(known is conf for known in _lenient):
        _lenient.append(conf)


#: Every known setting and its default. Durations accept seconds (numbers) or ``timedelta``.
DEFAULTS: Mapping[str, Any] = {
    "redis_url": None,
    "redis_options": {},
    "key_prefix": "scheduler:",
    "lock_duration": timedelta(seconds=30),
    "claim_lease": timedelta(seconds=10),
    "max_retries": 3,
    "retry_delay": timedelta(seconds=0.1),
    "enabled": True,
    "max_concurrent": 0,
    "catchup_grace": timedelta(seconds=5),
    "state_filename": None,
    "singleton_lease": timedelta(seconds=60),
    "buffer_limit": 100,
    "replace_wait": None,
    "refresh_interval": timedelta(seconds=1),
    "history_size": 20,
    "event_listeners": (),
    "metrics_port": 0,
    "metrics_address": "127.0.0.1",
    "wait_replicas": 0,
    "wait_timeout": timedelta(seconds=0.1),
    "min_interval": timedelta(seconds=1),
    "max_entry_size": 65_536,
    "owner_grace": timedelta(seconds=1),
    "web_token": None,
    "calendars": {},
    "default_jitter": timedelta(0),
    "freeze_heap": True,
    "runtime_shards": 1,
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated scheduler settings (see the settings reference in the docs)."""

    redis_url: str | None = None
    redis_options: Mapping[str, Any] = field(default_factory=dict)
    key_prefix: str = "scheduler:"
    lock_duration: timedelta = timedelta(seconds=30)
    claim_lease: timedelta = timedelta(seconds=10)
    max_retries: int = 3
    retry_delay: timedelta = timedelta(seconds=0.1)
    enabled: bool = True
    max_concurrent: int = 0
    catchup_grace: timedelta = timedelta(seconds=5)
    state_filename: str | None = None
    singleton_lease: timedelta = timedelta(seconds=60)
    #: Most runs of one ``buffer_all`` entry queued behind the running one; further slots are
    #: skipped (``buffer_full``).
    buffer_limit: int = 100
    #: How long the new run of a ``cancel_other`` / ``terminate_other`` entry waits for the run
    #: it replaces to stop (``None``: the singleton lease).
    replace_wait: timedelta | None = None
    refresh_interval: timedelta = timedelta(seconds=1)
    history_size: int = 20
    event_listeners: tuple[str, ...] = ()
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    wait_replicas: int = 0
    wait_timeout: timedelta = timedelta(seconds=0.1)
    min_interval: timedelta = timedelta(seconds=1)
    max_entry_size: int = 65_536
    #: How long after a slot a replica waits for the entry's owner before asking itself
    #: (``0``: every replica asks at once; see :mod:`.ownership`).
    owner_grace: timedelta = timedelta(seconds=1)
    #: The token every write of ``celery schedule web`` needs (``None``: read-only, unless
    #: ``--token`` gives one).
    web_token: str | None = None
    #: The jitter of the entries that set none (at most each entry's period; see the
    #: ``jitter`` entry key).
    default_jitter: timedelta = timedelta(0)
    #: Celery's ``beat_cron_starting_deadline``: at start-up, older missed slots are not
    #: caught up (``None``: no bound).
    starting_deadline: timedelta | None = None
    #: Named lists of exclusion dates (canonical items, see :mod:`.exclusions`) that entries
    #: use with their ``calendar`` key.
    calendars: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Once start-up is done, keep the objects it built out of the garbage collector's walks
    #: and collect young objects less often (see :mod:`.heap`).
    freeze_heap: bool = True
    #: How many hash tags the runtime entries are spread over (see :mod:`.store_shards`):
    #: on Redis Cluster, more than one spreads them over the masters.
    runtime_shards: int = 1


#: Celery's own settings read with the others: the :class:`Settings` field each one fills and
#: its default.
CELERY_SETTINGS: Mapping[str, tuple[str, Any]] = {
    "beat_cron_starting_deadline": ("starting_deadline", None),
}

#: The range each number setting accepts, checked at start (see the settings reference).
INT_RANGES: Mapping[str, tuple[int, int]] = {
    "max_retries": (0, 100),
    "max_concurrent": (0, 1_000_000),
    "buffer_limit": (1, 100_000),
    "history_size": (0, 10_000),
    "metrics_port": (0, 65_535),
    "wait_replicas": (0, 100),
    "max_entry_size": (1_024, 16 * 1_048_576),
    "runtime_shards": (1, 1_024),
}
#: The range (seconds) each duration setting accepts.
DURATION_RANGES: Mapping[str, tuple[float, float]] = {
    "lock_duration": (0.001, 86_400),
    "claim_lease": (0.1, 86_400),
    "retry_delay": (0, 60),
    "catchup_grace": (0, 86_400),
    "singleton_lease": (0.1, 7 * 86_400),
    "replace_wait": (0, 7 * 86_400),
    "refresh_interval": (0.05, 3_600),
    "wait_timeout": (0.001, 60),
    "min_interval": (0.001, 86_400),
    "owner_grace": (0, 60),
    "default_jitter": (0, 86_400),
}
#: Longest key prefix; longer ones only waste memory in every key.
MAX_PREFIX_LENGTH = 100
#: Most event listeners.
MAX_LISTENERS = 100


def shown(value: object) -> str:
    """``repr(value)``, cut to 60 characters (a huge value must not flood the error)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _setting_error(name: str, message: str) -> ConfigError:
    return ConfigError(message, field=SETTING_PREFIX + name)


#: Format characters that reorder or hide text on a terminal (bidirectional overrides and
#: isolates, direction marks); other format characters (zero-width joiners) are harmless.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


#: The characters :func:`has_control_characters` refuses: Unicode categories Cc (control),
#: Zl and Zp (line and paragraph separators) and Cs (surrogates), and :data:`BIDI_CONTROLS`.
_CONTROL_CHARACTERS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff" + "".join(sorted(BIDI_CONTROLS)) + "]"
)


def has_control_characters(text: str) -> bool:
    """True when ``text`` holds a control character (ESC, BEL, NUL, newline…), a line or
    paragraph separator, a bidirectional override (U+202E…), or a lone surrogate (bytes that
    were not UTF-8, as a Latin-1 terminal passes them: Redis could not store the text)."""
    return _CONTROL_CHARACTERS.search(text) is not None


def has_lone_surrogates(text: str) -> bool:
    """True when ``text`` cannot be encoded as UTF-8 (bytes a terminal passed undecoded)."""
    return not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text)


def _duration(name: str, value: object, *, allow_text: bool = False) -> timedelta:
    low, high = DURATION_RANGES[name]
    try:
        duration = to_timedelta(
            value, what=SETTING_PREFIX + name, allow_zero=low == 0, allow_text=allow_text
        )
    except ValueError as exc:
        raise _setting_error(name, str(exc).removeprefix(SETTING_PREFIX + name + " ")) from None
    if not low <= duration.total_seconds() <= high:
        raise _setting_error(
            name, f"must be between {low:g} and {high:g} seconds, not {shown(value)}"
        )
    return duration


def _int(name: str, value: object) -> int:
    low, high = INT_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _setting_error(
            name, f"must be a whole number from {low} to {high}, not {shown(value)}"
        )
    return value


def _optional_duration(name: str, value: object) -> timedelta | None:
    return None if value is None else _duration(name, value)


def _optional_str(name: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    raise _setting_error(name, f"must be a non-empty string or None, not {type(value).__name__}")


def _key_prefix(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_PREFIX_LENGTH:
        raise _setting_error(
            "key_prefix",
            f"must be a non-empty string of at most {MAX_PREFIX_LENGTH} characters, "
            f"not {shown(value)}",
        )
    if "{" in value or "}" in value or has_control_characters(value) or value != value.strip():
        raise _setting_error(
            "key_prefix",
            f"must not contain braces (Redis Cluster hash tags), control characters or "
            f"surrounding spaces, not {shown(value)}",
        )
    return value


def _address(name: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 255
        or any(ch.isspace() or not ch.isprintable() for ch in value)
    ):
        raise _setting_error(name, f"must be an IP address or host name, not {shown(value)}")
    return value


def _dotted_paths(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or len(value) > MAX_LISTENERS
        or not all(isinstance(path, str) and path for path in value)
    ):
        raise _setting_error(
            name, f"must be a list of at most {MAX_LISTENERS} dotted paths, not {shown(value)}"
        )
    return tuple(value)


_SETTING_KEY = re.compile(f"(?:celery_)?{SETTING_PREFIX}", re.IGNORECASE)


def _setting_name(key: str) -> str | None:
    """The setting a config key names: ``fork_scheduler_x``, or Django-style namespaced
    ``CELERY_FORK_SCHEDULER_X`` (``config_from_object(..., namespace="CELERY")``)."""
    if not _SETTING_KEY.match(key):  # most keys of a Celery config: one regex, not a loop
        return None
    lowered = key.lower()
    for prefix in (SETTING_PREFIX, "celery_" + SETTING_PREFIX):
        if lowered.startswith(prefix) and (key.islower() or key.isupper()):
            return lowered[len(prefix) :]
    return None


def _unknown_setting(key: str) -> ConfigError:
    """The error for an unknown ``fork_scheduler_*`` key, with the closest known name."""
    upper = key.isupper()
    prefix = key[: len(key) - len(key.lower().split(SETTING_PREFIX, 1)[1])]
    known = [prefix + (name.upper() if upper else name) for name in DEFAULTS]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return ConfigError(f"unknown setting; did you mean {close[0]!r}?", field=key)
    listed = ", ".join(SETTING_PREFIX + name for name in DEFAULTS)
    return ConfigError(f"unknown setting; known settings are: {listed}", field=key)


#: Redis URL schemes the claim backend accepts.
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://", "redis+sentinel://")


def _redis_url(value: object) -> str | None:
    url = _optional_str("redis_url", value)
    if url is None or url.startswith(REDIS_URL_SCHEMES[3:]):
        return url
    if not url.startswith(REDIS_URL_SCHEMES):
        from .backends.redis_connection import mask_url

        raise _setting_error(
            "redis_url",
            f"bad Redis URL {mask_url(url)}: it must start with one of "
            + ", ".join(REDIS_URL_SCHEMES),
        )
    return url


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _setting_error(name, f"must be True or False, not {shown(value)}")
    return value


def _redis_options(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _setting_error(
            "redis_options", f"must be a dict of client options, not {shown(value)}"
        )
    from .backends.redis_connection import check_client_options

    return check_client_options(value)


def _starting_deadline(value: object) -> timedelta | None:
    if value is None:
        return None
    try:
        return to_timedelta(value, what="beat_cron_starting_deadline")
    except ValueError as exc:
        raise ConfigError(
            str(exc).removeprefix("beat_cron_starting_deadline "),
            field="beat_cron_starting_deadline",
        ) from None


def _calendars(value: object) -> Mapping[str, tuple[str, ...]]:
    try:
        return calendars_from_setting(value)
    except ExclusionError as exc:
        raise _setting_error("calendars", str(exc)) from None


def _named(check: Callable[[str, Any], Any], name: str) -> Callable[[Any], Any]:
    return lambda value: check(name, value)


#: How each setting is checked, in the order problems are reported.
CHECKS: Mapping[str, Callable[[Any], Any]] = {
    "enabled": _named(_bool, "enabled"),
    "redis_options": _redis_options,
    "redis_url": _redis_url,
    "key_prefix": _key_prefix,
    **{name: _named(_duration, name) for name in ("lock_duration", "claim_lease")},
    "max_retries": _named(_int, "max_retries"),
    "retry_delay": _named(_duration, "retry_delay"),
    "max_concurrent": _named(_int, "max_concurrent"),
    "catchup_grace": _named(_duration, "catchup_grace"),
    "state_filename": _named(_optional_str, "state_filename"),
    "singleton_lease": _named(_duration, "singleton_lease"),
    "buffer_limit": _named(_int, "buffer_limit"),
    "replace_wait": _named(_optional_duration, "replace_wait"),
    "refresh_interval": _named(_duration, "refresh_interval"),
    "history_size": _named(_int, "history_size"),
    "event_listeners": _named(_dotted_paths, "event_listeners"),
    "metrics_port": _named(_int, "metrics_port"),
    "metrics_address": _named(_address, "metrics_address"),
    "wait_replicas": _named(_int, "wait_replicas"),
    "wait_timeout": _named(_duration, "wait_timeout"),
    "min_interval": _named(_duration, "min_interval"),
    "max_entry_size": _named(_int, "max_entry_size"),
    "owner_grace": _named(_duration, "owner_grace"),
    "web_token": _named(_optional_str, "web_token"),
    "default_jitter": lambda value: _duration("default_jitter", value, allow_text=True),
    "starting_deadline": _starting_deadline,
    "calendars": _calendars,
    "freeze_heap": _named(_bool, "freeze_heap"),
    "runtime_shards": _named(_int, "runtime_shards"),
}


def _tolerated(exc: ConfigError, what: str) -> None:
    message = f"fork scheduler: {exc} ({what}; beat refuses to start until it is fixed)"
    if message not in _reported:
        _reported.add(message)
        logger.error(message)


def read_settings(conf: Mapping[str, Any], *, strict: bool | None = None) -> Settings:
    """Read and validate every ``fork_scheduler_*`` setting of a Celery ``app.conf``.

    An unknown ``fork_scheduler_*`` key (a typo) is an error, with the closest known name, as
    is a value of the wrong kind; Celery's ``beat_cron_starting_deadline`` is checked too. With
    ``strict=False`` (the default in a worker process) each problem is logged once instead and
    the setting keeps its default.
    """
    if strict is None:
        strict = not any(known is conf for known in _lenient)
    defaults = {**DEFAULTS, **dict(CELERY_SETTINGS.values())}
    raw = dict(defaults)
    for celery_key, (field_name, default) in CELERY_SETTINGS.items():
        raw[field_name] = conf.get(celery_key, default)
    for key in list(conf.keys()):
        name = _setting_name(key)
        if name is None:
            continue
        if name not in DEFAULTS:
            if strict:
                raise _unknown_setting(key)
            _tolerated(_unknown_setting(key), "ignored")
            continue
        raw[name] = conf[key]
    values: dict[str, Any] = {}
    for name, check in CHECKS.items():
        try:
            values[name] = check(raw[name])
        except ConfigError as exc:
            if strict:
                raise
            _tolerated(exc, "the default is used")
            values[name] = check(defaults[name])
    return Settings(**values)


def app_timezone(app: Any) -> tzinfo:
    """The app's ``timezone`` setting as a ``tzinfo`` (Celery's ``app.timezone``; UTC when
    unset).

    Raises :class:`ConfigError` naming the setting ``timezone`` for an unknown zone name or a
    value of the wrong kind, rather than letting each entry be blamed for it.
    """
    try:
        zone = app.timezone
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"unknown time zone {shown(app.conf.timezone)}: "
            "expected an IANA name such as 'Europe/Berlin'",
            field="timezone",
        ) from None
    if not isinstance(zone, tzinfo):
        raise ConfigError(
            f"must be an IANA zone name such as 'Europe/Berlin' or a tzinfo, not {shown(zone)}",
            field="timezone",
        )
    try:
        to_zone(zone)  # the zone every wall-clock entry is read in: one error, named here
    except ScheduleError as exc:
        raise ConfigError(str(exc), field="timezone") from None
    return zone
