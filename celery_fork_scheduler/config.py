"""The ``fork_scheduler_*`` settings: read once from the Celery app, validated, frozen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .durations import to_timedelta
from .errors import ConfigError

SETTING_PREFIX = "fork_scheduler_"

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
    "refresh_interval": timedelta(seconds=1),
    "history_size": 20,
    "event_listeners": (),
    "metrics_port": 0,
    "wait_replicas": 0,
    "wait_timeout": timedelta(seconds=0.1),
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
    refresh_interval: timedelta = timedelta(seconds=1)
    history_size: int = 20
    event_listeners: tuple[str, ...] = ()
    metrics_port: int = 0
    wait_replicas: int = 0
    wait_timeout: timedelta = timedelta(seconds=0.1)


def _setting_error(name: str, message: str) -> ConfigError:
    return ConfigError(message, field=SETTING_PREFIX + name)


def _duration(name: str, value: object, *, allow_zero: bool) -> timedelta:
    try:
        return to_timedelta(value, what=SETTING_PREFIX + name, allow_zero=allow_zero)
    except ValueError as exc:
        raise _setting_error(name, str(exc).removeprefix(SETTING_PREFIX + name + " ")) from None


def _non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _setting_error(name, f"must be a whole number >= 0, not {value!r}")
    return value


def _port(name: str, value: object) -> int:
    port = _non_negative_int(name, value)
    if port > 65535:
        raise _setting_error(name, f"must be a TCP port (0 to 65535, 0 = off), not {value!r}")
    return port


def _optional_str(name: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    raise _setting_error(name, f"must be a non-empty string or None, not {value!r}")


def _dotted_paths(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(path, str) and path for path in value
    ):
        raise _setting_error(name, f"must be a list of dotted paths, not {value!r}")
    return tuple(value)


def _setting_name(key: str) -> str | None:
    """The setting a config key names: ``fork_scheduler_x``, or Django-style namespaced
    ``CELERY_FORK_SCHEDULER_X`` (``config_from_object(..., namespace="CELERY")``)."""
    lowered = key.lower()
    for prefix in (SETTING_PREFIX, "celery_" + SETTING_PREFIX):
        if lowered.startswith(prefix) and (key.islower() or key.isupper()):
            return lowered[len(prefix) :]
    return None


def read_settings(conf: Mapping[str, Any]) -> Settings:
    """Read and validate every ``fork_scheduler_*`` setting of a Celery ``app.conf``.

    An unknown ``fork_scheduler_*`` key (a typo) is an error, as is a value of the wrong kind.
    """
    raw = dict(DEFAULTS)
    for key in list(conf.keys()):
        name = _setting_name(key)
        if name is None:
            continue
        if name not in DEFAULTS:
            known = ", ".join(SETTING_PREFIX + k for k in DEFAULTS)
            raise ConfigError(f"unknown setting; known settings are: {known}", field=key)
        raw[name] = conf[key]

    key_prefix = raw["key_prefix"]
    if not isinstance(key_prefix, str) or not key_prefix:
        raise _setting_error("key_prefix", f"must be a non-empty string, not {key_prefix!r}")
    if not isinstance(raw["enabled"], bool):
        raise _setting_error("enabled", f"must be True or False, not {raw['enabled']!r}")
    options = raw["redis_options"]
    if not isinstance(options, Mapping):
        raise _setting_error("redis_options", f"must be a dict of client options, not {options!r}")
    claim_lease = _duration("claim_lease", raw["claim_lease"], allow_zero=False)
    return Settings(
        redis_url=_optional_str("redis_url", raw["redis_url"]),
        redis_options=dict(options),
        key_prefix=key_prefix,
        lock_duration=_duration("lock_duration", raw["lock_duration"], allow_zero=False),
        claim_lease=claim_lease,
        max_retries=_non_negative_int("max_retries", raw["max_retries"]),
        retry_delay=_duration("retry_delay", raw["retry_delay"], allow_zero=True),
        enabled=raw["enabled"],
        max_concurrent=_non_negative_int("max_concurrent", raw["max_concurrent"]),
        catchup_grace=_duration("catchup_grace", raw["catchup_grace"], allow_zero=True),
        state_filename=_optional_str("state_filename", raw["state_filename"]),
        singleton_lease=_duration("singleton_lease", raw["singleton_lease"], allow_zero=False),
        refresh_interval=_duration("refresh_interval", raw["refresh_interval"], allow_zero=False),
        history_size=_non_negative_int("history_size", raw["history_size"]),
        event_listeners=_dotted_paths("event_listeners", raw["event_listeners"]),
        metrics_port=_port("metrics_port", raw["metrics_port"]),
        wait_replicas=_non_negative_int("wait_replicas", raw["wait_replicas"]),
        wait_timeout=_duration("wait_timeout", raw["wait_timeout"], allow_zero=False),
    )
