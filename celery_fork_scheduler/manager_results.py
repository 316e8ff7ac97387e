"""The plain results the Manager returns: jobs, run records, history items, stats, replicas."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar

from . import lazy_args
from .entry import Catchup, Entry
from .schedules import SlotSchedule
from .store import PauseState, pause_state

#: A replica records itself every 5 s; one silent for longer than this is stale.
REPLICA_LIVE_SECONDS = 15.0


@dataclass(frozen=True, kw_only=True)
class Job:
    """A plain snapshot of one entry and its state across the cluster."""

    name: str
    task: str
    schedule: SlotSchedule
    tags: frozenset[str]
    source: str
    enabled: bool
    overlap: str
    next_run: datetime | None
    last_run: datetime | None
    run_count: int
    paused: bool
    #: Runs sent by :meth:`Manager.trigger`; they are not in ``run_count`` (``max_runs``).
    manual_runs: int = 0
    pause_note: str = ""
    paused_at: datetime | None = None
    last_outcome: str = ""
    version: int = 0
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    start_at: datetime | None = None
    end_at: datetime | None = None
    max_runs: int | None = None
    catchup: Catchup = "latest"
    catchup_window: timedelta | None = None
    pause_on_failure: bool = False
    #: The entry's own exclusion dates (canonical items) and the calendars it names.
    exclude: tuple[str, ...] = ()
    calendar: tuple[str, ...] = ()
    #: The entry's own jitter (``None``: ``fork_scheduler_default_jitter`` applies).
    jitter: timedelta | None = None
    finished: bool = False

    @property
    def schedule_text(self) -> str:
        """The schedule in human form, e.g. ``"every 5 minutes"``."""
        return self.schedule.describe()

    @property
    def state(self) -> str:
        """``finished``, ``paused``, ``disabled`` or ``active`` (the first that applies)."""
        if self.finished:
            return "finished"
        if self.paused:
            return "paused"
        if not self.enabled:
            return "disabled"
        return "active"

    @classmethod
    def from_entry(cls, entry: Entry, state: Mapping[str, str], version: int, now: datetime) -> Job:
        """The snapshot of ``entry`` from its state hash (``version`` 0 for a static entry)."""
        finished = _finished(entry, state)
        try:
            pause = pause_state(state)
        except ValueError:  # a pause time that does not parse: still paused
            pause = PauseState(bool(state.get("paused")), state.get("pause_note", ""))
        return cls(
            **{field: getattr(entry, field) for field in _ENTRY_FIELDS},
            next_run=None if finished else entry.first_slot_after(now),
            last_run=_last_run(state),
            run_count=_number(state.get("runs")),
            manual_runs=_number(state.get("manual_runs")),
            paused=pause.paused,
            pause_note=pause.note,
            paused_at=pause.since,
            last_outcome=_last_outcome(state),
            version=version,
            args=_shown_args(entry.args),
            kwargs=_shown_kwargs(entry.kwargs),
            options=dict(entry.options),
            finished=finished,
        )


def _shown_args(args: Any) -> tuple[Any, ...]:
    """Plain args as they are; ``BeatLazyFunc`` items named; another callable: none shown."""
    args = lazy_args.shown(args)
    return () if callable(args) else tuple(args)


def _shown_kwargs(kwargs: Any) -> dict[str, Any]:
    kwargs = lazy_args.shown(kwargs)
    return {} if callable(kwargs) else dict(kwargs)


#: The fields of a :class:`Job` that are the entry's own, as they are.
_ENTRY_FIELDS = (
    "name",
    "task",
    "schedule",
    "tags",
    "source",
    "enabled",
    "overlap",
    "description",
    "start_at",
    "end_at",
    "max_runs",
    "catchup",
    "catchup_window",
    "pause_on_failure",
    "exclude",
    "calendar",
    "jitter",
)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One item of an entry's run history."""

    slot: datetime
    outcome: str
    task_id: str
    by: str
    at: datetime
    duration: float | None = None
    error: str = ""

    @classmethod
    def from_json(cls, raw: bytes | str) -> RunRecord:
        """Parse a history item as stored by the Lua scripts and the worker."""
        return HistoryItem.from_stored(raw).record()


#: The keys of a stored history item that hold a time, in microseconds since the epoch.
_HISTORY_TIMES = ("slot", "at")


@dataclass(frozen=True, kw_only=True)
class HistoryItem:
    """One item of an entry's history as stored: its JSON object, or only its text when it
    cannot be decoded (``data`` is then ``None``)."""

    text: str
    data: Mapping[str, Any] | None

    @classmethod
    def from_stored(cls, raw: bytes | str) -> HistoryItem:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        return cls(text=text, data=data if isinstance(data, dict) else None)

    def record(self) -> RunRecord:
        """The item as a :class:`RunRecord`; ``ValueError`` when it is not a run record."""
        data = self.data
        if data is None:
            raise ValueError(f"history item is not a JSON object: {self.text[:80]!r}")
        try:
            return RunRecord(
                slot=_from_us(data["slot"]),
                outcome=data["outcome"],
                task_id=data.get("task_id", ""),
                by=data.get("replica", ""),
                at=_from_us(data["at"]),
                duration=data.get("duration"),
                error=data.get("error", ""),
            )
        except (KeyError, TypeError, OverflowError) as exc:
            raise ValueError(f"history item is not a run record: {self.text[:80]!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The stored item with its times as ISO-8601 (UTC); ``{"raw": text}`` when it cannot
        be decoded."""
        if self.data is None:
            return {"raw": self.text}
        item = dict(self.data)
        for key in _HISTORY_TIMES:
            value = item.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                with contextlib.suppress(OverflowError, ValueError):  # else kept as stored
                    item[key] = _from_us(value).isoformat()
        return item


@dataclass(frozen=True, kw_only=True)
class EntryStats:
    """Counters of one entry across the cluster."""

    runs: int
    completed: int
    errors: int
    failures: int
    skips: Mapping[str, int]

    @classmethod
    def from_state(cls, state: Mapping[str, str]) -> EntryStats:
        """Read the counters out of an entry's state hash."""
        return cls(
            runs=_number(state.get("runs")),
            completed=_number(state.get("completed")),
            errors=_number(state.get("errors")),
            failures=_number(state.get("failures")),
            skips={
                key.removeprefix("skips:"): _number(value)
                for key, value in state.items()
                if key.startswith("skips:")
            },
        )


@dataclass(frozen=True, kw_only=True)
class ReplicaInfo:
    """One beat replica as it last recorded itself in Redis."""

    id: str
    hostname: str | None
    pid: int | None
    last_tick: datetime | None
    age: float | None
    runtime_version: int | None
    entries: int | None

    @property
    def stale(self) -> bool:
        """True when the replica has not ticked for :data:`REPLICA_LIVE_SECONDS`."""
        return self.age is None or self.age > REPLICA_LIVE_SECONDS

    def seen_within(self, seconds: float) -> bool:
        """True when it ticked within ``seconds`` (or its tick cannot be read)."""
        return self.age is None or self.age <= seconds

    @classmethod
    def from_stored(cls, replica_id: bytes | str, raw: bytes | str, now: datetime) -> ReplicaInfo:
        """Parse a record as written by a replica's announce, ``now`` for its age."""
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            record = {}
        if not isinstance(record, dict):
            record = {}
        last = _instant(record.get("last_tick"))
        return cls(
            id=replica_id.decode() if isinstance(replica_id, bytes) else replica_id,
            hostname=_of_type(record.get("hostname"), str),
            pid=_of_type(record.get("pid"), int),
            last_tick=last,
            age=(now - last).total_seconds() if last is not None else None,
            runtime_version=_of_type(record.get("runtime_version"), int),
            entries=_of_type(record.get("entries"), int),
        )


@dataclass(frozen=True, kw_only=True)
class TriggerResult:
    """What :meth:`Manager.trigger` did: the task id sent, or why nothing was sent; and, for a
    run that was sent, why it could not be recorded in Redis (``unrecorded``)."""

    task_id: str | None = None
    skipped: Literal["busy", "capped", "paused", "disabled"] | None = None
    unrecorded: str | None = None


def _last_run(state: Mapping[str, str]) -> datetime | None:
    sent_at = state.get("sent_at")
    try:
        return _from_us(int(sent_at)) if sent_at else None
    except (ValueError, OverflowError):  # a corrupted state hash: no last run to show
        return None


def _number(value: str | None) -> int:
    """A counter of a state hash; 0 when missing or corrupted."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _finished(entry: Entry, state: Mapping[str, str]) -> bool:
    """Whether the entry used up its ``max_runs``: its run counter reached it (the claim
    script's own test), or the script recorded it as ``finished`` under this or a higher
    ``max_runs`` (a raised ``max_runs`` makes it active again)."""
    if entry.max_runs is None:
        return False
    used = max(_number(state.get("runs")), _number(state.get("finished")))
    return used >= entry.max_runs


def _from_us(value: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(value))


_T = TypeVar("_T")


def _of_type(value: object, kind: type[_T]) -> _T | None:
    if isinstance(value, bool) and kind is not bool:
        return None
    return value if isinstance(value, kind) else None


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
        return (
            moment.astimezone(timezone.utc)
            if moment.tzinfo
            else moment.replace(tzinfo=timezone.utc)
        )
    except (ValueError, OverflowError):
        return None


def _last_outcome(state: Mapping[str, str]) -> str:
    """The latest slot's outcome: the reason of a skip, the worker's ``completed`` /
    ``failed`` once its run ended (RECORD_OUTCOME), else the beat's ``claimed`` / ``sent``."""
    said = state.get("state", "")
    if said == "skipped":
        return state.get("reason", "")
    if said == "sent" and state.get("outcome"):
        return state["outcome"]
    return said
