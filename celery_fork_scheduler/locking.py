"""Distributed mutual exclusion on Redis: :class:`RedisLocker` hands out :class:`RedisLock`.

Redis key layout (one key per lock, nothing else)::

    <key_prefix><key>   string   the owner token of the current holder (``secrets.token_hex``)
                                 TTL: the lock duration, in milliseconds (``PX``)

A lock is claimed with ``SET <key> <token> NX PX <ms>``. Release and extension go only through
the Lua scripts below, which act only when the stored token is the caller's, so an owner whose
lock has expired can never delete or prolong the lock of the next owner. Every script touches a
single key, so the locker works on Redis Cluster as well.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeAlias

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from .errors import ConfigError, LockNotAcquiredError, LockNotOwnedError

__all__ = [
    "EXTEND_SCRIPT",
    "UNLOCK_SCRIPT",
    "RedisLock",
    "RedisLocker",
    "RedisLockerOptions",
]

logger = logging.getLogger(__name__)

RedisClient: TypeAlias = "redis.Redis | RedisCluster"
DurationLike: TypeAlias = "timedelta | float"

UNLOCK_SCRIPT = """
-- Release a lock, but only for its owner.
-- KEYS[1]  the lock key
-- ARGV[1]  the owner token
-- returns  1 when the key was deleted; 0 when it is missing or holds another token
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""

EXTEND_SCRIPT = """
-- Set the remaining time of a lock, but only for its owner.
-- KEYS[1]  the lock key
-- ARGV[1]  the owner token
-- ARGV[2]  the new time to live, in milliseconds (a positive integer)
-- returns  1 when the time to live was set; 0 when the key is missing or holds another token
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
"""

_TOKEN_BYTES = 16


def _to_timedelta(value: DurationLike, name: str) -> timedelta:
    """Convert seconds (``int``/``float``) or a ``timedelta`` to a ``timedelta``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    raise TypeError(f"{name} must be a timedelta or a number of seconds, not {value!r}")


def _to_milliseconds(duration: timedelta) -> int:
    """Round a positive duration up to whole milliseconds, so it never becomes ``PX 0``."""
    return math.ceil(duration / timedelta(milliseconds=1))


@dataclass(frozen=True, init=False)
class RedisLockerOptions:
    """How long a lock lives, how often and how fast to retry, and where its key lives.

    Durations accept a :class:`~datetime.timedelta` or a number of seconds; they are stored
    as ``timedelta``. Construction converts but does not validate: call :meth:`validate`
    (``RedisLocker`` does).
    """

    lock_duration: timedelta
    max_retries: int
    retry_delay: timedelta
    key_prefix: str

    def __init__(
        self,
        *,
        lock_duration: DurationLike = timedelta(seconds=30),
        max_retries: int = 3,
        retry_delay: DurationLike = timedelta(milliseconds=100),
        key_prefix: str = "scheduler:lock:",
    ) -> None:
        object.__setattr__(self, "lock_duration", _to_timedelta(lock_duration, "lock_duration"))
        object.__setattr__(self, "max_retries", max_retries)
        object.__setattr__(self, "retry_delay", _to_timedelta(retry_delay, "retry_delay"))
        object.__setattr__(self, "key_prefix", key_prefix)

    @classmethod
    def default(cls) -> RedisLockerOptions:
        """The defaults: 30 s locks, 3 retries 0.1 s apart, keys under ``scheduler:lock:``."""
        return cls()

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ``ValueError``) naming the first invalid option."""
        if self.lock_duration <= timedelta(0):
            raise ConfigError("lock duration must be positive")
        if self.max_retries < 0:
            raise ConfigError("max retries cannot be negative")
        if self.retry_delay < timedelta(0):
            raise ConfigError("retry delay cannot be negative")
        if not self.key_prefix:
            raise ConfigError("key prefix cannot be empty")


class RedisLocker:
    """Acquire :class:`RedisLock` objects on one Redis client.

    ``client_or_url`` is a ``redis.Redis`` / ``RedisCluster`` client, used as is and never
    closed here, or a ``redis://`` URL, for which the locker makes a client and closes it in
    :meth:`close`. ``sleep`` is called with seconds between attempts; tests pass a recorder.
    """

    def __init__(
        self,
        client_or_url: RedisClient | str,
        options: RedisLockerOptions | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options if options is not None else RedisLockerOptions.default()
        self.options.validate()
        if isinstance(client_or_url, str):
            self.client: RedisClient = redis.Redis.from_url(client_or_url)
            self._owns_client = True
        else:
            self.client = client_or_url
            self._owns_client = False
        self._sleep = sleep
        self._unlock_script: Script = self.client.register_script(UNLOCK_SCRIPT)
        self._extend_script: Script = self.client.register_script(EXTEND_SCRIPT)

    @classmethod
    def from_app(cls, app: Any) -> RedisLocker:
        """A locker on the scheduler's Redis, configured by the app's settings.

        ``fork_scheduler_lock_duration``, ``fork_scheduler_max_retries`` and
        ``fork_scheduler_retry_delay`` give the options; the keys live under
        ``<fork_scheduler_key_prefix>lock:``. Raises
        :class:`~celery_fork_scheduler.RedisRequiredError` without Redis.
        """
        from .backends.factory import redis_client_for
        from .config import read_settings
        from .manager import RedisRequiredError

        settings = read_settings(app.conf)
        client = redis_client_for(app, settings)
        if client is None:
            raise RedisRequiredError("RedisLocker.from_app")
        options = RedisLockerOptions(
            lock_duration=settings.lock_duration,
            max_retries=settings.max_retries,
            retry_delay=settings.retry_delay,
            key_prefix=f"{settings.key_prefix}lock:",
        )
        locker = cls(client, options)
        locker._owns_client = True
        return locker

    def lock(self, key: str) -> RedisLock:
        """Claim ``key_prefix + key``; retry ``max_retries`` times, else raise.

        Raises :class:`~celery_fork_scheduler.errors.LockNotAcquiredError` when another owner
        held the key through every attempt.
        """
        if not key:
            raise ValueError("lock key cannot be empty")
        redis_key = self.options.key_prefix + key
        token = secrets.token_hex(_TOKEN_BYTES)
        attempts = 1 + self.options.max_retries
        for attempt in range(1, attempts + 1):
            if self._try_claim(redis_key, token):
                return RedisLock(self, redis_key, token, self.options.lock_duration)
            if attempt < attempts:
                self._sleep(self.options.retry_delay.total_seconds())
        raise LockNotAcquiredError(redis_key, attempts)

    def _try_claim(self, redis_key: str, token: str) -> bool:
        ms = _to_milliseconds(self.options.lock_duration)
        return bool(self.client.set(redis_key, token, nx=True, px=ms))

    def close(self) -> None:
        """Close the client if this locker created it from a URL; otherwise do nothing."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> RedisLocker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisLock:
    """One held lock: the Redis ``key``, the owner ``token`` and the ``duration`` it was taken for.

    Use it as a context manager (exit unlocks) or call :meth:`unlock` yourself. Normally made by
    :meth:`RedisLocker.lock`; building one by hand with another token gives a non-owner handle.
    """

    def __init__(self, locker: RedisLocker, key: str, token: str, duration: timedelta) -> None:
        self.key = key
        self.token = token
        self.duration = duration
        self._locker = locker

    def unlock(self) -> None:
        """Delete the key if this lock still owns it, else raise ``LockNotOwnedError``."""
        deleted = self._locker._unlock_script(keys=[self.key], args=[self.token])
        if not deleted:
            raise LockNotOwnedError(self.key)

    def extend(self, duration: DurationLike | None = None) -> None:
        """Set the remaining time to ``duration`` (default: :attr:`duration`) if still owned.

        The time to live is replaced, not added to. Raises ``LockNotOwnedError`` when the lock
        expired or another owner holds the key.
        """
        new_duration = self.duration if duration is None else _to_timedelta(duration, "duration")
        if new_duration <= timedelta(0):
            raise ValueError("extend duration must be positive")
        ms = _to_milliseconds(new_duration)
        extended = self._locker._extend_script(keys=[self.key], args=[self.token, ms])
        if not extended:
            raise LockNotOwnedError(self.key)

    def owned(self) -> bool:
        """Ask Redis whether the key still holds this lock's token."""
        value = self._locker.client.get(self.key)
        if isinstance(value, bytes):
            value = value.decode()
        return value == self.token

    def __enter__(self) -> RedisLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.unlock()
            return
        try:
            self.unlock()
        except LockNotOwnedError:
            # The body's own exception is the one to report; the lost lock is logged.
            logger.warning("lock %r was lost before the failing critical section ended", self.key)

    def __repr__(self) -> str:
        return f"RedisLock(key={self.key!r}, duration={self.duration!r})"
