"""What the pages show, as plain data: entry rows, the filters, an entry's timeline and its
durations chart, what each replica did lately, the latest skips. No Flask here: each function
takes what the Manager returned (and ``now``) and is tested on its own."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ..backends.redis_connection import scrub_secrets
from ..cli.output import local, relative, span, zone_of
from ..manager import Manager, RedisRequiredError
from ..manager_results import HistoryItem, Job
from ..outages import Outage

#: The states an entry can be filtered by, in the order the filter lists them.
STATES = ("active", "paused", "finished", "disabled")
#: How far back "recently" goes on the replicas and missed pages.
RECENT = timedelta(hours=1)
#: The most skips the missed page lists.
LISTED_SKIPS = 50


def all_tags(jobs: Iterable[Job]) -> list[str]:
    return sorted({tag for job in jobs for tag in job.tags})


def filter_jobs(
    jobs: Iterable[Job], *, tag: str = "", state: str = "", search: str = ""
) -> list[Job]:
    """The jobs with ``tag``, in ``state``, whose name holds ``search`` (any case); an empty
    filter keeps everything."""
    needle = search.strip().casefold()
    return [
        job
        for job in jobs
        if (not tag or tag in job.tags)
        and (not state or job.state == state)
        and (not needle or needle in job.name.casefold())
    ]


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the entries page."""

    job: Job
    state: str
    next_local: str
    next_relative: str
    last_relative: str
    last_outcome: str
    outcome_class: str


def rows(
    jobs: Sequence[Job],
    now: datetime,
    latest: Mapping[str, Sequence[HistoryItem]] | None = None,
) -> list[Row]:
    """A row per job; ``latest``: the newest history items of each, whose last slot's final
    outcome (a worker's ``completed`` over the beat's ``sent``) is the one shown."""
    result = []
    for job in jobs:
        zone = zone_of(job.schedule)
        marks = timeline((latest or {}).get(job.name, ()), zone)
        last = marks[-1] if marks else None
        result.append(
            Row(
                job=job,
                state=job.state,
                next_local=local(job.next_run, zone) if job.next_run else "never",
                next_relative=relative(job.next_run, now) if job.next_run else "",
                last_relative=relative(job.last_run, now) if job.last_run else "-",
                last_outcome=last.label if last else job.last_outcome,
                outcome_class=last.kind if last else outcome_class(job.last_outcome),
            )
        )
    return result


def outcome_class(outcome: str) -> str:
    """The colour class of a stored outcome: ``completed``, ``failed`` (the task raised, or
    the message could not be sent), ``uncertain``, ``inflight`` (sent, no outcome from a
    worker yet) or ``skipped``."""
    known = {
        "completed": "completed",
        "error": "failed",
        "failed": "failed",
        "uncertain": "uncertain",
        "sent": "inflight",
        "claimed": "inflight",
    }
    # Anything else is a skip: ``skipped:<reason>`` in a history, the bare reason in a state.
    return known.get(outcome, "skipped")


#: Which item of a slot tells its outcome: a worker's final word beats the send.
_WEIGHT = {"completed": 4, "failed": 4, "skipped": 3, "uncertain": 2, "inflight": 1}
_LABELS = {
    "completed": "completed",
    "failed": "failed",
    "skipped": "skipped",
    "uncertain": "sent, maybe (the publish raised)",
    "inflight": "in flight",
}


@dataclass(frozen=True, kw_only=True)
class Mark:
    """One slot on an entry's timeline."""

    slot: datetime | None
    slot_text: str
    kind: str
    label: str
    duration: float | None = None
    error: str = ""
    by: str = ""
    task_id: str = ""

    @property
    def title(self) -> str:
        parts = [f"{self.slot_text}: {self.label}"]
        if self.duration is not None:
            parts.append(f"{self.duration:.2f}s")
        if self.error:
            parts.append(self.error)
        return " - ".join(parts)


def timeline(items: Sequence[HistoryItem], zone: Any) -> list[Mark]:
    """One mark per slot of the history (oldest first), with the slot's final outcome: the
    worker's ``completed``/``error`` over the beat's ``sent``; an item that cannot be read is
    a mark of its own."""
    best: dict[Any, tuple[int, Mark]] = {}
    order: list[Any] = []
    for index, item in enumerate(reversed(items)):
        mark = _mark(item, zone)
        key = mark.slot if mark.slot is not None else ("raw", index)
        weight = _WEIGHT[mark.kind]
        if key not in best:
            order.append(key)
            best[key] = (weight, mark)
        elif weight >= best[key][0]:
            best[key] = (weight, mark)
    marks = [best[key][1] for key in order]
    return sorted(marks, key=lambda m: m.slot or datetime.min.replace(tzinfo=timezone.utc))


def _mark(item: HistoryItem, zone: Any) -> Mark:
    data = item.to_dict()
    if "raw" in data:
        text = scrub_secrets(str(data["raw"]))[:200]
        return Mark(slot=None, slot_text="?", kind="uncertain", label="unreadable", error=text)
    outcome = str(data.get("outcome", ""))
    kind = outcome_class(outcome)
    slot = _instant(data.get("slot"))
    label = _LABELS[kind]
    if kind == "skipped":
        reason = outcome.partition(":")[2] or outcome
        label = f"skipped: {reason}"
    if outcome == "failed":
        label = "failed (not sent)"
    duration = data.get("duration")
    return Mark(
        slot=slot,
        slot_text=local(slot, zone) if slot else str(data.get("slot", "?")),
        kind=kind,
        label=label,
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        error=scrub_secrets(str(data.get("error", "") or ""))[:500],
        by=str(data.get("replica", "")),
        task_id=str(data.get("task_id", "")),
    )


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    return moment if moment.tzinfo else None


@dataclass(frozen=True, kw_only=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str
    title: str


@dataclass(frozen=True, kw_only=True)
class Chart:
    """A bar per run with a duration (oldest left), scaled to ``width`` x ``height``."""

    width: int
    height: int
    bars: list[Bar]
    top: str


def duration_chart(marks: Sequence[Mark], *, width: int = 600, height: int = 120) -> Chart:
    timed = [mark for mark in marks if mark.duration is not None]
    longest = max((mark.duration or 0.0 for mark in timed), default=0.0) or 1.0
    step = width / max(len(timed), 1)
    bars = []
    for index, mark in enumerate(timed):
        tall = max((mark.duration or 0.0) / longest * (height - 4), 1.0)
        bars.append(
            Bar(
                x=round(index * step + step * 0.1, 2),
                y=round(height - tall, 2),
                width=round(step * 0.8, 2),
                height=round(tall, 2),
                kind=mark.kind,
                title=mark.title,
            )
        )
    return Chart(width=width, height=height, bars=bars, top=_seconds(longest) if timed else "")


def _seconds(value: float) -> str:
    return f"{value:.2f}s" if value < 60 else span(value)


@dataclass(frozen=True, kw_only=True)
class Activity:
    """What one replica (or worker) did in the recent window, from the entries' histories."""

    published: int = 0
    skipped: int = 0
    reasons: Mapping[str, int] | None = None


def recent_items(
    histories: Mapping[str, Sequence[HistoryItem]], now: datetime, window: timedelta = RECENT
) -> list[tuple[str, dict[str, Any]]]:
    """Every readable history item recorded within ``window`` of ``now``, with its entry,
    newest first."""
    found = []
    for name, items in histories.items():
        for item in items:
            data = item.to_dict()
            at = _instant(data.get("at"))
            if at is not None and now - at <= window:
                found.append((name, data))
    found.sort(key=lambda pair: str(pair[1].get("at")), reverse=True)
    return found


def activity(recent: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Activity]:
    """Slots each replica published and skipped, by replica id."""
    published: Counter[str] = Counter()
    skipped: dict[str, Counter[str]] = {}
    for _, data in recent:
        outcome, by = str(data.get("outcome", "")), str(data.get("replica", ""))
        if outcome in ("sent", "uncertain"):
            published[by] += 1
        elif outcome.startswith("skipped:"):
            skipped.setdefault(by, Counter())[outcome.partition(":")[2]] += 1
    return {
        replica: Activity(
            published=published[replica],
            skipped=sum(skipped.get(replica, Counter()).values()),
            reasons=dict(skipped.get(replica, Counter())),
        )
        for replica in set(published) | set(skipped)
    }


@dataclass(frozen=True, kw_only=True)
class Skip:
    entry: str
    slot: str
    at: str
    reason: str
    by: str


def skips(recent: Sequence[tuple[str, dict[str, Any]]], now: datetime) -> list[Skip]:
    """The latest skipped slots (at most :data:`LISTED_SKIPS`), newest first."""
    found = []
    for name, data in recent:
        outcome = str(data.get("outcome", ""))
        if not outcome.startswith("skipped:"):
            continue
        slot, at = _instant(data.get("slot")), _instant(data.get("at"))
        found.append(
            Skip(
                entry=name,
                slot=local(slot, timezone.utc) if slot else str(data.get("slot", "?")),
                at=relative(at, now) if at else "?",
                reason=outcome.partition(":")[2],
                by=str(data.get("replica", "")),
            )
        )
        if len(found) >= LISTED_SKIPS:
            break
    return found


def definition_text(data: Mapping[str, Any]) -> str:
    """The stored definition of an entry as indented JSON (URL credentials masked)."""
    keys = (
        "task",
        "schedule_spec",
        "timezone",
        "args",
        "kwargs",
        "options",
        "tags",
        "overlap",
        "enabled",
        "start_at",
        "end_at",
        "max_runs",
        "catchup",
        "catchup_window_seconds",
        "pause_on_failure",
        "jitter_seconds",
        "description",
        "source",
        "version",
    )
    shown = {key: data.get(key) for key in keys}
    return scrub_secrets(json.dumps(shown, indent=2, default=str, ensure_ascii=False))


def histories(
    manager: Manager, names: Sequence[str] | None = None, limit: int = 100
) -> dict[str, list[HistoryItem]]:
    """The latest ``limit`` history items of each entry (default: every entry), read in one
    round trip (none without Redis)."""
    if names is None:
        names = [job.name for job in manager.jobs()]
    try:
        store = manager.store()
    except RedisRequiredError:
        return {}
    pipe = store.client.pipeline(transaction=False)
    for name in names:
        pipe.lrange(store.keys.history(name), 0, limit - 1)
    replies = pipe.execute() if names else []
    return {
        name: [HistoryItem.from_stored(raw) for raw in reply]
        for name, reply in zip(names, replies, strict=True)
    }


@dataclass(frozen=True, kw_only=True)
class OutageRow:
    started: str
    started_relative: str
    lasted: str
    slots: int
    entry_count: int
    entries: str
    replica: str
    summary: str


def outage_row(outage: Outage, now: datetime) -> OutageRow:
    more = outage.entry_count - len(outage.entries)
    return OutageRow(
        started=local(outage.started, timezone.utc),
        started_relative=relative(outage.started, now),
        lasted=span((outage.ended - outage.started).total_seconds()),
        slots=outage.slots,
        entry_count=outage.entry_count,
        entries=", ".join(outage.entries) + (f" (+{more})" if more > 0 else ""),
        replica=outage.replica,
        summary=outage.summary(),
    )
