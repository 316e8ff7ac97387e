"""How the ``schedule`` commands print: escaped text, tables, colours, times, jobs as data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import click

from ..config import has_control_characters
from ..manager_results import Job
from ..schedules import Interval, SlotSchedule

_OUTCOME_COLOURS = {"sent": "green", "completed": "green", "error": "red", "failed": "red"}

Cell = str | tuple[str, str]


def safe(text: str) -> str:
    """``text`` with control characters (ESC, BEL, NUL, newlines, bidirectional overrides…)
    shown as escapes, so that stored text cannot steer the operator's terminal."""
    if not has_control_characters(text):
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if has_control_characters(ch) else ch
        for ch in text
    )


def span(seconds: float) -> str:
    whole = int(abs(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def relative(moment: datetime, now: datetime) -> str:
    seconds = (moment - now).total_seconds()
    return f"in {span(seconds)}" if seconds >= 0 else f"{span(seconds)} ago"


def local(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def zone_of(schedule: SlotSchedule) -> ZoneInfo:
    return schedule.zone


def zone_column(schedule: SlotSchedule) -> str:
    """The zone a schedule follows; ``-`` for an interval, which ignores zones."""
    return "-" if isinstance(schedule, Interval) else schedule.zone.key


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    """Left-aligned columns; a cell ``(text, colour)`` is coloured after padding."""
    cells = [
        [(safe(c), "") if isinstance(c, str) else (safe(c[0]), c[1]) for c in row] for row in rows
    ]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(text)) for w, (text, _) in zip(widths, row, strict=True)]
    lines = [_row([(h, "") for h in headers], widths, bold=True)]
    lines += [_row(row, widths) for row in cells]
    return "\n".join(lines)


def _row(cells: Sequence[tuple[str, str]], widths: Sequence[int], *, bold: bool = False) -> str:
    padded = [text.ljust(width) for (text, _), width in zip(cells, widths, strict=True)]
    padded[-1] = padded[-1].rstrip()
    return "  ".join(
        click.style(text, fg=colour or None, bold=bold) if colour or bold else text
        for text, (_, colour) in zip(padded, cells, strict=True)
    ).rstrip()


def fields(pairs: Sequence[tuple[str, Cell]]) -> str:
    width = max(len(label) for label, _ in pairs)
    lines = []
    for label, value in pairs:
        text, colour = (value, "") if isinstance(value, str) else value
        text = safe(text)
        lines.append(f"{label.ljust(width)}  {click.style(text, fg=colour) if colour else text}")
    return "\n".join(lines)


def outcome_colour(outcome: str) -> str:
    if outcome.startswith("skipped"):
        return "yellow"
    return _OUTCOME_COLOURS.get(outcome, "")


def job_data(job: Job) -> dict[str, Any]:
    zone = zone_of(job.schedule)
    return {
        "name": job.name,
        "task": job.task,
        "schedule": job.schedule_text,
        "schedule_spec": job.schedule.to_dict(),
        "timezone": zone.key,
        "tags": sorted(job.tags),
        "source": job.source,
        "static": job.source != "runtime",
        "enabled": job.enabled,
        "paused": job.paused,
        "pause_note": job.pause_note,
        "paused_at": iso(job.paused_at),
        "pause_on_failure": job.pause_on_failure,
        "overlap": job.overlap,
        "singleton": job.overlap != "allow",
        "next_run": iso(job.next_run),
        "next_run_local": iso(job.next_run.astimezone(zone)) if job.next_run else None,
        "last_run": iso(job.last_run),
        "last_outcome": job.last_outcome,
        "run_count": job.run_count,
        "finished": job.finished,
        "version": job.version,
        "args": list(job.args),
        "kwargs": dict(job.kwargs),
        "options": dict(job.options),
        "description": job.description,
        "jitter_seconds": job.jitter.total_seconds() if job.jitter is not None else None,
    }


def next_text(job: Job, now: datetime) -> str:
    if job.next_run is None:
        return "never"
    return f"{local(job.next_run, zone_of(job.schedule))} ({relative(job.next_run, now)})"


def plural(n: int, noun: str) -> str:
    """``"1 entry"``, ``"3 entries"``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"
