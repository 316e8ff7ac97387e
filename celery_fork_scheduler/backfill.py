"""Backfill: publish the past slots of an entry that were never published, once per cluster.

Internal module behind :meth:`Manager.backfill <celery_fork_scheduler.Manager.backfill>` and
``celery schedule backfill``. The pipeline per slot, oldest first, is the tick's:
decide + claim (one Lua script, :data:`~.backends.lua.BACKFILL_CLAIM`) -> publish -> record
(:data:`~.backends.lua.BACKFILL_RECORD`), with the publishes paced to a rate.

What "never published" means is decided in Redis, atomically per slot (see ``docs/manager.md``,
"Backfill"): a slot is refused when a backfill claimed it already, when the scheduler holds a
claim for it, when its state or history says it was published, when it is newer than the
entry's high-water mark (the scheduler has not decided it yet) or in the future, and — unless
forced — when it is older than what the capped history remembers, or the entry is paused;
and, unless forced, every slot of a disabled entry (``enabled=False``) is skipped.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import redis

from .backends.lua import BACKFILL_CLAIM, BACKFILL_RECORD
from .config import Settings
from .entry import Entry
from .errors import ConfigError
from .ids import OVERLAP_HEADER, task_id_for
from .keys import Keys
from .publishing import CeleryPublisher, build_occurrence

__all__ = [
    "BACKFILL_HEADER",
    "DEFAULT_LIMIT",
    "DEFAULT_RATE",
    "BackfillInputError",
    "BackfillOptions",
    "BackfillSlot",
    "backfill_slots",
    "run_backfill",
]

#: Message header of backfilled runs (``True``).
BACKFILL_HEADER = "fork_scheduler_backfill"
#: Publishes per second unless told otherwise.
DEFAULT_RATE = 10.0
#: The slowest pace a backfill takes: one publish a day (a slower one would wait for ever).
MIN_RATE = 1 / 86_400
#: The most slots one backfill covers unless ``limit`` says more.
DEFAULT_LIMIT = 10_000

BackfillOverlap = Literal["allow", "skip", "buffer_one"]
_OVERLAPS = ("allow", "skip", "buffer_one")
_EPSILON = timedelta(microseconds=1)
#: The earliest ``start`` accepted: slot arithmetic steps a little before it, and a day's
#: margin keeps every zone's local time of it representable.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
INF = float("inf")


class BackfillInputError(ConfigError):
    """A backfill request that cannot be carried out; names the entry and the field."""


@dataclass(frozen=True, kw_only=True)
class BackfillOptions:
    """How one backfill runs (converted and checked once, by :meth:`checked`)."""

    overlap: BackfillOverlap | None = None
    rate: float = DEFAULT_RATE
    limit: int = DEFAULT_LIMIT
    dry_run: bool = False
    force: bool = False

    def checked(self, name: str) -> BackfillOptions:
        if self.overlap is not None and self.overlap not in _OVERLAPS:
            raise BackfillInputError(
                f"must be one of {', '.join(_OVERLAPS)}, not {self.overlap!r}",
                entry=name,
                field="overlap",
            )
        rate = self.rate
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not MIN_RATE <= rate < INF
        ):
            raise BackfillInputError(
                f"must be a number of publishes per second from {MIN_RATE:.3g} (one a day), "
                f"not {self.rate!r}",
                entry=name,
                field="rate",
            )
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise BackfillInputError(
                f"must be a whole number of slots above 0, not {self.limit!r}",
                entry=name,
                field="limit",
            )
        return self


@dataclass(frozen=True, kw_only=True)
class BackfillSlot:
    """What a backfill did with one slot.

    ``outcome``: ``sent``; ``already_published``; ``skipped:<reason>``; ``failed`` (the
    publish raised: the message may have left, so the slot is never backfilled again);
    ``would_send`` (dry run).
    """

    slot: datetime
    outcome: str
    task_id: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot.isoformat(),
            "outcome": self.outcome,
            "task_id": self.task_id,
            "detail": self.detail,
        }


def _utc(name: str, field_name: str, moment: datetime) -> datetime:
    if not isinstance(moment, datetime):
        raise BackfillInputError(
            f"must be a datetime, not {type(moment).__name__}", entry=name, field=field_name
        )
    if moment.tzinfo is None:  # naive: UTC, as every slot is
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        message = f"{moment.isoformat()} is before the year 1 or after 9999 in UTC"
        raise BackfillInputError(message, entry=name, field=field_name) from None


def backfill_slots(entry: Entry, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The slots of ``entry`` in ``[start, end]``, oldest first (pure: no clock, no I/O).

    :class:`BackfillInputError` when ``start`` is after ``end`` or the range holds more than
    ``limit`` slots (nothing has been written then).
    """
    start = _utc(entry.name, "start", start)
    end = _utc(entry.name, "end", end)
    if start < EARLIEST:
        raise BackfillInputError(
            f"{start.isoformat()} is before {EARLIEST.date().isoformat()}: no schedule reaches "
            "back that far",
            entry=entry.name,
            field="start",
        )
    if start > end:
        raise BackfillInputError(
            f"{start.isoformat()} is after end {end.isoformat()}", entry=entry.name, field="start"
        )
    slots: list[datetime] = []
    for slot in _slots_between(entry, start, end):
        if len(slots) == limit:
            raise BackfillInputError(
                f"the range holds more than {limit} slots; narrow it or raise the limit",
                entry=entry.name,
                field="limit",
            )
        slots.append(slot)
    return slots


def _slots_between(entry: Entry, start: datetime, end: datetime) -> Iterator[datetime]:
    after = start - _EPSILON
    while (slot := entry.first_slot_after(after)) is not None and slot <= end:
        yield slot
        after = slot


@dataclass(kw_only=True)
class _Pace:
    """Spaces publishes ``1 / rate`` seconds apart, on an injected clock and sleep."""

    rate: float
    sleep: Callable[[float], None]
    monotonic: Callable[[], float]
    next_at: float | None = None

    def wait(self) -> None:
        if self.next_at is None:
            return
        delay = self.next_at - self.monotonic()
        if delay > 0:
            self.sleep(delay)

    def sent(self) -> None:
        self.next_at = self.monotonic() + 1 / self.rate


@dataclass(kw_only=True)
class _Run:
    """One backfill run: its id (the ``replica`` of its history items) and what it needs."""

    app: Any
    client: Any
    keys: Keys
    settings: Settings
    entry: Entry
    options: BackfillOptions
    pace: _Pace
    #: The version of the runtime entry's definition read (``None``: a static entry).
    version: int | None = None
    claim: Any = None
    recorder: Any = None
    id: str = field(
        default_factory=lambda: (
            f"backfill:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
    )

    def __post_init__(self) -> None:  # by SHA, loaded again after a NOSCRIPT reply
        self.claim = self.client.register_script(BACKFILL_CLAIM)
        self.recorder = self.client.register_script(BACKFILL_RECORD)

    @property
    def overlap(self) -> str:
        return self.options.overlap or self.entry.overlap

    def entry_keys(self) -> list[str]:
        name = self.entry.name
        return [*self.keys.entry_keys(name), self.keys.backfill(name)]

    def decide(self, slot: datetime, task_id: str) -> tuple[str, str]:
        """Claim the slot for this run (or, in a dry run, only ask): (verdict, detail). A
        connection error is tried again (``fork_scheduler_max_retries``): a claim that ran and
        lost its reply is this run's again when asked (round 66: else it stayed in flight)."""
        lease_ms = int(self.settings.singleton_lease.total_seconds() * 1000)
        args = [
            _micros(slot),
            task_id,
            self.id,
            "allow" if self.overlap == "allow" else "skip",
            lease_ms,
            self.settings.history_size,
            int(self.options.force),
            int(self.options.dry_run),
            "" if self.version is None else self.version,
        ]
        attempt = 0
        while True:
            try:
                verdict, detail = self.claim(keys=self.entry_keys(), args=args)
                return _text(verdict), _text(detail)
            except (redis.ConnectionError, redis.TimeoutError):
                attempt += 1
                if attempt > self.settings.max_retries:
                    raise
                self.pace.sleep(self.settings.retry_delay.total_seconds())

    def confirmed(self) -> bool:
        """With ``fork_scheduler_wait_replicas``, whether that many Redis replicas have the
        claim (``WAIT``), as the scheduler's claims must; always True without it."""
        wanted = self.settings.wait_replicas
        if wanted <= 0:
            return True
        timeout_ms = int(self.settings.wait_timeout.total_seconds() * 1000)
        return int(self.client.execute_command("WAIT", wanted, timeout_ms)) >= wanted

    def publish(self, publisher: CeleryPublisher, slot: datetime, task_id: str) -> BackfillSlot:
        """Publish a claimed slot and record it: ``sent``, or ``failed`` with the error. A
        claim the Redis replicas did not confirm is not published (a failover could lose it
        and let a later backfill publish the slot again: simulator seed 71050): ``failed``."""
        if not self.confirmed():
            error = (
                f"the claim was not confirmed by {self.settings.wait_replicas} Redis replica(s) "
                "(fork_scheduler_wait_replicas): nothing published"
            )
            self.record(slot, task_id, "failed", error)
            return BackfillSlot(slot=slot, outcome="failed", task_id=task_id, detail=error)
        try:
            occurrence = build_occurrence(self.entry, slot, task_id)
        except Exception as exc:  # lazy arguments that raise: never sent (round 63)
            error = f"{type(exc).__name__}: {exc}"
            self.record(slot, task_id, "failed", error)
            return BackfillSlot(slot=slot, outcome="failed", task_id=task_id, detail=error)
        headers = {**occurrence.headers, BACKFILL_HEADER: True}
        if self.overlap == "allow":
            headers.pop(OVERLAP_HEADER, None)
        else:  # the worker frees the marker this run holds when it ends
            headers[OVERLAP_HEADER] = "skip"
        try:
            publisher.publish(replace(occurrence, headers=headers))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.record(slot, task_id, "failed", error)
            return BackfillSlot(slot=slot, outcome="failed", task_id=task_id, detail=error)
        self.pace.sent()
        self.record(slot, task_id, "sent", "")
        return BackfillSlot(slot=slot, outcome="sent", task_id=task_id)

    def record(self, slot: datetime, task_id: str, outcome: str, error: str) -> None:
        self.recorder(
            keys=self.entry_keys(),
            args=[_micros(slot), task_id, self.id, outcome, self.settings.history_size, error],
        )


def run_backfill(
    app: Any,
    client: Any,
    keys: Keys,
    settings: Settings,
    entry: Entry,
    slots: Sequence[datetime],
    options: BackfillOptions,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    version: int | None = None,
) -> list[BackfillSlot]:
    """Backfill ``slots`` (oldest first) of ``entry``; one :class:`BackfillSlot` each.
    ``version``: of a runtime entry's definition (a slot asked about after a later change,
    or a removal and an add, is ``skipped:removed``).

    A publish that fails ends the run there (the broker is likely gone): the slots after it
    are not in the result.
    """
    run = _Run(
        app=app,
        client=client,
        keys=keys,
        settings=settings,
        entry=entry,
        options=options,
        pace=_Pace(rate=options.rate, sleep=sleep, monotonic=monotonic),
        version=version,
    )
    results: list[BackfillSlot] = []
    with app.producer_or_acquire() as producer:
        # No message templates: each backfilled message carries headers of its own.
        publisher = CeleryPublisher(app, lambda: producer, templates=False)
        for slot in slots:
            task_id = task_id_for(entry.name, slot)
            if entry.excludes(slot):  # never published, by design: nothing to make up for
                results.append(BackfillSlot(slot=slot, outcome="skipped:excluded", task_id=task_id))
                continue
            if not entry.enabled and not options.force:  # enabled=False never fires it
                results.append(BackfillSlot(slot=slot, outcome="skipped:disabled", task_id=task_id))
                continue
            if not options.dry_run:
                run.pace.wait()
            verdict, detail = run.decide(slot, task_id)
            if verdict == "claimed":
                result = run.publish(publisher, slot, task_id)
            elif verdict == "eligible":
                result = BackfillSlot(slot=slot, outcome="would_send", task_id=task_id)
            elif verdict == "already_published":
                result = BackfillSlot(slot=slot, outcome=verdict, task_id=task_id, detail=detail)
            else:
                result = BackfillSlot(slot=slot, outcome=f"skipped:{detail}", task_id=task_id)
            results.append(result)
            if result.outcome == "failed":
                break
    return results


def _micros(slot: datetime) -> int:
    delta = slot - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
