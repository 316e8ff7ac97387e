"""celery-fork-scheduler: an active-active Celery beat scheduler.

Run any number of ``celery -A proj beat -S fork`` replicas; a Redis claim publishes each
occurrence of each entry exactly once across them.
"""

from __future__ import annotations

from .errors import (
    BackendUnavailableError,
    ConfigError,
    ForkSchedulerError,
    LockError,
    LockNotAcquiredError,
    LockNotOwnedError,
    ScheduleError,
)
from .ids import ENTRY_HEADER, SLOT_HEADER, task_id_for
from .locking import RedisLock, RedisLocker, RedisLockerOptions
from .schedule_parsing import parse_schedule
from .scheduler import Scheduler
from .schedules import SlotSchedule, at, cron, every

__version__ = "0.1.0"

__all__ = [
    "ENTRY_HEADER",
    "SLOT_HEADER",
    "BackendUnavailableError",
    "ConfigError",
    "ForkSchedulerError",
    "LockError",
    "LockNotAcquiredError",
    "LockNotOwnedError",
    "RedisLock",
    "RedisLocker",
    "RedisLockerOptions",
    "ScheduleError",
    "Scheduler",
    "SlotSchedule",
    "__version__",
    "at",
    "cron",
    "every",
    "parse_schedule",
    "task_id_for",
]
