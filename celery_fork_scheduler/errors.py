"""Exception hierarchy of celery-fork-scheduler: one base class, identifiers on attributes."""

from __future__ import annotations


class ForkSchedulerError(Exception):
    """Base class of every error raised by celery-fork-scheduler."""


class ScheduleError(ForkSchedulerError, ValueError):
    """A schedule definition (expression, time, interval, timezone) is invalid."""


class ConfigError(ForkSchedulerError, ValueError):
    """A setting or a schedule entry is invalid; names the entry and the field."""

    def __init__(self, message: str, *, entry: str | None = None, field: str | None = None) -> None:
        self.entry = entry
        self.field = field
        self.reason = message
        where = []
        if entry is not None:
            where.append(f"entry {entry!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class BackendUnavailableError(ForkSchedulerError):
    """The claim backend (Redis) could not be reached after the configured retries."""


class LockError(ForkSchedulerError):
    """Base class of the errors of :class:`~celery_fork_scheduler.RedisLocker`."""


class LockNotAcquiredError(LockError):
    """The lock was held by someone else through every retry."""

    def __init__(self, key: str, attempts: int) -> None:
        self.key = key
        self.attempts = attempts
        super().__init__(f"failed to acquire lock {key!r} after retries ({attempts} attempts)")


class LockNotOwnedError(LockError):
    """The lock expired or was taken by another owner before it was released or extended."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__("lock not owned by this instance")
