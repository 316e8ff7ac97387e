"""celery-fork-scheduler: an active-active Celery beat scheduler.

Run any number of ``celery -A proj beat -S fork`` replicas; a Redis claim publishes each
occurrence of each entry exactly once across them.
"""

from __future__ import annotations

from .decorators import periodic
from .errors import (
    BackendUnavailableError,
    ConfigError,
    ForkSchedulerError,
    LockError,
    LockNotAcquiredError,
    LockNotOwnedError,
    ScheduleError,
)
from .extension import install
from .ids import ENTRY_HEADER, SLOT_HEADER, task_id_for
from .listeners import EventListener, LoggingEventListener, register_event_listeners
from .locking import RedisLock, RedisLocker, RedisLockerOptions
from .manager import (
    BackfillInputError,
    BackfillSlot,
    EntryStats,
    HistoryItem,
    Job,
    JobBuilder,
    JobNotFoundError,
    Manager,
    RedisRequiredError,
    ReplicaInfo,
    RunRecord,
    TriggerResult,
)
from .scheduler import Scheduler
from .schedules import SlotSchedule, at, cron, every, parse_schedule
from .slot import ScheduledSlot, scheduled_slot
from .store import StaleVersionError
from .validation import CheckReport, Problem, check_app

__version__ = "0.1.0"

__all__ = [
    "ENTRY_HEADER",
    "SLOT_HEADER",
    "BackendUnavailableError",
    "BackfillInputError",
    "BackfillSlot",
    "CheckReport",
    "ConfigError",
    "EntryStats",
    "EventListener",
    "ForkSchedulerError",
    "HistoryItem",
    "Job",
    "JobBuilder",
    "JobNotFoundError",
    "LockError",
    "LockNotAcquiredError",
    "LockNotOwnedError",
    "LoggingEventListener",
    "Manager",
    "Problem",
    "RedisLock",
    "RedisLocker",
    "RedisLockerOptions",
    "RedisRequiredError",
    "ReplicaInfo",
    "RunRecord",
    "ScheduleError",
    "ScheduledSlot",
    "Scheduler",
    "SlotSchedule",
    "StaleVersionError",
    "TriggerResult",
    "__version__",
    "at",
    "check_app",
    "cron",
    "every",
    "install",
    "parse_schedule",
    "periodic",
    "register_event_listeners",
    "scheduled_slot",
    "task_id_for",
]
