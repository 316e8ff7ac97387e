"""The read-only commands: ``list``, ``show``, ``next``, ``history`` and ``replicas``."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any

import click
from celery.bin.base import CeleryCommand

from ..backends.redis_connection import scrub_secrets
from ..config import app_timezone
from ..errors import ScheduleError
from ..manager import MAX_COUNT, Manager, RedisRequiredError
from ..manager_results import EntryStats, Job, ReplicaInfo
from ..schedules import coerce_schedule
from ..schedules.base import to_zone
from .output import (
    Cell,
    fields,
    iso,
    job_data,
    local,
    next_text,
    outcome_colour,
    plural,
    relative,
    safe,
    span,
    table,
    zone_column,
    zone_of,
)
from .session import BadInputError, Session, json_option, session_for


@dataclass(frozen=True, kw_only=True)
class EntryDetails:
    """What ``show`` (and the web page of an entry) tells of one entry."""

    job: Job
    slots: list[datetime]
    counters: dict[str, int]
    history: list[dict[str, Any]]
    #: The slots among :attr:`slots` on an exclusion date (skipped, ``excluded``).
    excluded: frozenset[datetime] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """The ``show --json`` shape (``GET /api/entries/<name>`` too)."""
        return {
            **job_data(self.job),
            **_limits_data(self.job),
            "next_runs": [slot.isoformat() for slot in self.slots],
            "excluded_runs": [slot.isoformat() for slot in self.slots if slot in self.excluded],
            "counters": self.counters,
            "history": self.history,
        }


def entry_details(
    manager: Manager, name: str, now: datetime, count: int, *, history: int = 10
) -> EntryDetails:
    """One entry, its next ``count`` runs after ``now``, its counters and latest ``history``
    items (none of the last two without Redis)."""
    job = manager.get(name)
    slots = [] if job.finished else manager.next_runs(name, count, after=now)
    excluded = (
        frozenset(manager.excluded_runs(name, slots))
        if job.exclude or job.calendar
        else frozenset()
    )
    try:
        counters = _counters(manager.stats(name))
        items = [history_data(item.to_dict()) for item in manager.history_items(name, history)]
    except RedisRequiredError:
        counters, items = {}, []
    return EntryDetails(job=job, slots=slots, counters=counters, history=items, excluded=excluded)


@dataclass(frozen=True, kw_only=True)
class ReplicasReport:
    """The replicas seen within a time, and how many older records are not shown."""

    runtime_version: int
    shown: list[ReplicaInfo]
    hidden_older: int

    def to_dict(self) -> dict[str, Any]:
        """The ``replicas --json`` shape (``GET /api/replicas`` too)."""
        return {
            "runtime_version": self.runtime_version,
            "replicas": [replica_data(replica) for replica in self.shown],
            "hidden_older": self.hidden_older,
        }


def replicas_report(manager: Manager, within: float) -> ReplicasReport:
    """The replicas that ticked within ``within`` seconds (see :meth:`Manager.replicas`)."""
    current = manager.store().version()
    everyone = manager.replicas(within=math.inf)
    shown = [replica for replica in everyone if replica.seen_within(within)]
    return ReplicasReport(
        runtime_version=current, shown=shown, hidden_older=len(everyone) - len(shown)
    )


@click.command("list", cls=CeleryCommand)
@click.option("--tag", help="Only entries with this tag.")
@click.option("--paused", is_flag=True, help="Only paused entries.")
@json_option
@click.pass_context
def list_(ctx: click.Context, tag: str | None, paused: bool, as_json: bool) -> None:
    """Every entry (config, @periodic and runtime) with its next and last run."""
    session = session_for(ctx, as_json)
    manager = session.manager()
    jobs = [job for job in manager.jobs(tag) if job.paused or not paused]
    for name, why in sorted(manager.unreadable().items()):
        session.warn(f"runtime entry {name!r} skipped: {why}")

    def render() -> str:
        if not jobs:
            return "no entries"
        rows = [
            [
                job.name,
                job.schedule_text + (f" (jitter {_jitter_text(job)})" if job.jitter else ""),
                zone_column(job.schedule),
                ",".join(sorted(job.tags)) or "-",
                next_text(job, session.now),
                _last_text(job, session.now),
                str(job.run_count),
                _state(job),
                job.source,
            ]
            for job in jobs
        ]
        headers = ["NAME", "SCHEDULE", "TZ", "TAGS", "NEXT RUN", "LAST RUN", "RUNS", "STATE"]
        return table([*headers, "SOURCE"], rows)

    session.emit([job_data(job) for job in jobs], render)


def _state(job: Job) -> Cell:
    if job.finished:
        return ("finished", "blue")
    if job.paused and not job.enabled:
        return ("paused, disabled", "yellow")
    if job.paused:
        return ("paused", "yellow")
    if not job.enabled:
        return ("disabled", "red")
    return ("active", "green")


def _last_text(job: Job, now: datetime) -> Cell:
    if job.last_run is None:
        return "-"
    text = relative(job.last_run, now)
    if job.last_outcome:
        return (f"{text} ({job.last_outcome})", outcome_colour(job.last_outcome))
    return text


@click.command("show", cls=CeleryCommand)
@click.argument("name")
@click.option(
    "-n",
    "count",
    default=10,
    show_default=True,
    type=click.IntRange(1, MAX_COUNT),
    help="How many next runs.",
)
@json_option
@click.pass_context
def show(ctx: click.Context, name: str, count: int, as_json: bool) -> None:
    """The full definition of one entry, its next runs, counters and last runs."""
    session = session_for(ctx, as_json)
    details = entry_details(session.manager(), name, session.now, count)
    job, slots, counters, history = (
        details.job,
        details.slots,
        details.counters,
        details.history,
    )
    zone = zone_of(job.schedule)
    data = details.to_dict()

    def render() -> str:
        paused: Cell = _state(job)
        if job.finished:
            paused = (f"finished (max runs {job.max_runs} reached)", "blue")
        elif job.paused:
            since = f" since {local(job.paused_at, zone)}" if job.paused_at else ""
            note = f": {job.pause_note}" if job.pause_note else ""
            paused = (f"paused{since}{note}", "yellow")
        pairs: list[tuple[str, Cell]] = [
            ("name", job.name),
            ("task", job.task),
            ("schedule", job.schedule_text),
            ("timezone", zone.key),
            ("source", f"{job.source} ({'runtime' if job.source == 'runtime' else 'static'})"),
            ("state", paused),
            ("overlap", job.overlap + (" (singleton)" if job.overlap != "allow" else "")),
            ("starts", local(job.start_at, zone) if job.start_at else "-"),
            ("ends", local(job.end_at, zone) if job.end_at else "-"),
            ("max runs", str(job.max_runs) if job.max_runs is not None else "-"),
            ("catchup", _catchup_text(job)),
            ("on failure", "pause" if job.pause_on_failure else "-"),
            ("exclude", ", ".join(job.exclude) or "-"),
            ("calendar", ", ".join(job.calendar) or "-"),
            ("jitter", _jitter_text(job)),
            ("tags", ", ".join(sorted(job.tags)) or "-"),
            ("args", json.dumps(list(job.args), default=str)),
            ("kwargs", json.dumps(dict(job.kwargs), default=str)),
            ("options", json.dumps(dict(job.options), default=str)),
            ("description", job.description or "-"),
            ("version", str(job.version)),
        ]
        parts = [fields(pairs), "", f"next {len(slots)} runs"]
        parts += [
            f"  {local(slot, zone)}  ({relative(slot, session.now)})"
            + ("  excluded" if slot in details.excluded else "")
            for slot in slots
        ]
        if job.finished:
            parts.append("  none: the entry has finished its runs")
        elif not slots:
            parts.append("  none: the schedule has ended")
        parts += ["", "counters"]
        parts.append(
            "  " + "  ".join(f"{key} {value}" for key, value in counters.items())
            if counters
            else "  - (no Redis)"
        )
        parts += ["", "last runs"]
        if history:
            parts.append(_indent(_history_table(history, zone, session.now)))
        else:
            parts.append("  no history yet")
        return "\n".join(parts)

    session.emit(data, render)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _limits_data(job: Job) -> dict[str, Any]:
    """When an entry may fire and how it catches up: the ``show``-only fields."""
    window = job.catchup_window
    return {
        "start_at": iso(job.start_at),
        "end_at": iso(job.end_at),
        "max_runs": job.max_runs,
        "catchup": job.catchup,
        "catchup_window_seconds": window.total_seconds() if window is not None else None,
        "exclude": list(job.exclude),
        "calendar": list(job.calendar),
    }


def _catchup_text(job: Job) -> str:
    window = job.catchup_window
    return job.catchup + (f" (window {span(window.total_seconds())})" if window else "")


def _jitter_text(job: Job) -> str:
    if job.jitter is None:
        return "default (fork_scheduler_default_jitter)"
    return f"{job.jitter.total_seconds():g} s" if job.jitter else "0 (none)"


def _counters(stats: EntryStats) -> dict[str, int]:
    counters = {
        "runs": stats.runs,
        "completed": stats.completed,
        "errors": stats.errors,
        "failures": stats.failures,
    }
    counters.update({f"skips:{reason}": n for reason, n in sorted(stats.skips.items())})
    return counters


def _history_table(items: Sequence[Mapping[str, Any]], zone: tzinfo, now: datetime) -> str:
    rows: list[list[Cell]] = []
    for item in items:
        if "raw" in item:
            rows.append(["?", "?", "", "", "", "", scrub_secrets(str(item["raw"]))])
            continue
        slot = item.get("slot")
        at = item.get("at")
        outcome = str(item.get("outcome", ""))
        duration = item.get("duration")
        slot_time, at_time = _stored_time(slot), _stored_time(at)
        rows.append(
            [
                local(slot_time, zone) if slot_time else str(slot if slot is not None else "-"),
                (outcome, outcome_colour(outcome)),
                relative(at_time, now) if at_time else str(at if at is not None else "-"),
                f"{duration:.2f}s" if isinstance(duration, (int, float)) else "",
                str(item.get("task_id", "")),
                str(item.get("replica", "")),
                scrub_secrets(str(item.get("error", ""))),
            ]
        )
    return table(["SLOT", "OUTCOME", "AT", "DURATION", "TASK ID", "BY", "ERROR"], rows)


def _outage_table(outages: Sequence[Mapping[str, Any]], now: datetime) -> str:
    rows: list[list[Cell]] = []
    for outage in outages:
        started, ended = (
            datetime.fromisoformat(outage["started"]),
            datetime.fromisoformat(outage["ended"]),
        )
        names = ", ".join(outage["entries"])
        more = outage["entry_count"] - len(outage["entries"])
        rows.append(
            [
                relative(started, now),
                span((ended - started).total_seconds()),
                f"{outage['slots']} slots of {outage['entry_count']} entries",
                safe(names + (f" (+{more})" if more > 0 else "")),
                outage["replica"],
            ]
        )
    return table(["STARTED", "LASTED", "MISSED", "ENTRIES", "REPLICA"], rows)


def history_data(item: dict[str, Any]) -> dict[str, Any]:
    """A history item with any URL credentials in its error text masked."""
    for key in ("error", "raw"):
        if isinstance(item.get(key), str):
            item[key] = scrub_secrets(item[key])
    return item


def _stored_time(value: object) -> datetime | None:
    """An ISO-8601 time of a history item, or ``None`` when it is not one (shown as stored)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
        return moment.astimezone(timezone.utc) if moment.tzinfo else None
    except (ValueError, OverflowError):
        return None


@click.command("next", cls=CeleryCommand)
@click.argument("expression")
@click.option("-n", "count", default=10, show_default=True, type=click.IntRange(1, MAX_COUNT))
@click.option("--tz", "zone", help="IANA time zone (default: the app's timezone).")
@json_option
@click.pass_context
def next_(ctx: click.Context, expression: str, count: int, zone: str | None, as_json: bool) -> None:
    """Preview the next runs of any schedule string or cron expression (no Redis needed)."""
    session = session_for(ctx, as_json)
    # --tz stands for the app's zone: a zone the expression names itself ("... in Asia/Tokyo")
    # comes first, as for an entry.
    default_zone = app_timezone(session.app) if zone is None else to_zone(zone)
    try:
        parsed = coerce_schedule(expression, default_tz=default_zone)
    except ScheduleError:
        if expression in _entry_names(session):
            raise BadInputError(
                f"{expression!r} is an entry, not a schedule: its next runs are in "
                f"'celery schedule show {expression}'"
            ) from None
        raise
    parsed.validate()
    slots: list[datetime] = []
    after = session.now
    while len(slots) < count:
        slot = parsed.next_slot(after)
        if slot is None:
            break
        slots.append(slot)
        after = slot
    shown = zone_of(parsed)
    data = {
        "expression": expression,
        "schedule": parsed.describe(),
        "timezone": shown.key,
        "slots": [{"utc": s.isoformat(), "local": s.astimezone(shown).isoformat()} for s in slots],
    }

    def render() -> str:
        lines = [safe(f"{parsed.describe()}  ({shown.key})")]
        width = len(str(len(slots)))
        for index, slot in enumerate(slots, 1):
            lines.append(
                f"  {str(index).rjust(width)}  {local(slot, shown)}  "
                f"{slot.strftime('%Y-%m-%d %H:%M:%S')} UTC  ({relative(slot, session.now)})"
            )
        if len(slots) < count:
            lines.append("  (no further runs)")
        return "\n".join(lines)

    session.emit(data, render)


def _entry_names(session: Session) -> set[str]:
    """The static entries, and the runtime ones when Redis answers (for a hint only)."""
    names = set(session.app.conf.beat_schedule or {})
    with contextlib.suppress(Exception):
        names.update(job.name for job in session.manager().jobs())
    return names


@click.command("history", cls=CeleryCommand)
@click.argument("name", required=False)
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(1, MAX_COUNT))
@click.option(
    "--outages",
    is_flag=True,
    help="Instead of an entry's runs: the latest Redis outages and the slots each cost.",
)
@json_option
@click.pass_context
def history(ctx: click.Context, name: str | None, count: int, outages: bool, as_json: bool) -> None:
    """The latest runs of an entry, newest first (as many as fork_scheduler_history_size),
    or with --outages the latest claim-backend outages, newest first."""
    if outages == (name is not None):
        raise click.UsageError("give an entry NAME, or --outages (not both)")
    session = session_for(ctx, as_json)
    manager = session.manager()
    if name is None:
        kept = [outage.to_dict() for outage in manager.outages(count)]
        session.emit(kept, lambda: _outage_table(kept, session.now) if kept else "no outage kept")
        return
    job = manager.get(name)
    items = [history_data(item.to_dict()) for item in manager.history_items(name, count)]
    session.emit(
        items,
        lambda: (
            _history_table(items, zone_of(job.schedule), session.now) if items else "no history yet"
        ),
    )


#: The longest ``--within`` of ``schedule replicas`` (a hundred years; NaN is refused too).
MAX_WITHIN_SECONDS = 100 * 366 * 86_400.0


def _not_nan(seconds: float) -> float:
    """``--within`` as given, unless it is NaN (which every range check lets through)."""
    if math.isnan(seconds):
        raise click.BadParameter("must be a number of seconds, not nan")
    return seconds


@click.command("replicas", cls=CeleryCommand)
@click.option(
    "--within",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, max=MAX_WITHIN_SECONDS),
    callback=lambda _ctx, _param, value: _not_nan(value),
    help="Only replicas that ticked within this many seconds.",
)
@json_option
@click.pass_context
def replicas(ctx: click.Context, within: float, as_json: bool) -> None:
    """The beat replicas seen recently: last tick, runtime version, entries."""
    session = session_for(ctx, as_json)
    report = replicas_report(session.manager(), within)
    current, shown, hidden = report.runtime_version, report.shown, report.hidden_older
    data = report.to_dict()

    def render() -> str:
        lines = []
        if shown:
            rows: list[list[Cell]] = [
                [
                    r.id,
                    local(r.last_tick, timezone.utc) if r.last_tick else "-",
                    f"{span(r.age)} ago" if r.age is not None else "-",
                    str(r.runtime_version),
                    str(r.entries),
                    ("stale", "yellow") if r.stale else ("live", "green"),
                ]
                for r in shown
            ]
            headers = ["REPLICA", "LAST TICK", "AGE", "VERSION", "ENTRIES", "STATUS"]
            lines.append(table(headers, rows))
        else:
            lines.append(f"no beat replica ticked in the last {span(within)}")
        lines.append(f"runtime version in Redis: {current}")
        if hidden:
            lines.append(f"{plural(hidden, 'older record')} hidden (see --within)")
        return "\n".join(lines)

    session.emit(data, render)


def replica_data(replica: ReplicaInfo) -> dict[str, Any]:
    return {
        "id": replica.id,
        "hostname": replica.hostname,
        "pid": replica.pid,
        "last_tick": iso(replica.last_tick),
        "age_seconds": round(replica.age, 3) if replica.age is not None else None,
        "runtime_version": replica.runtime_version,
        "entries": replica.entries,
        "status": "stale" if replica.stale else "live",
    }
