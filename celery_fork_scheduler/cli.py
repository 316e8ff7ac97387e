"""``celery -A proj schedule ...``: see and steer the schedule from a terminal.

A thin click layer over :class:`~celery_fork_scheduler.Manager`, registered through the
``celery.commands`` entry-point group. Every command takes ``--json``; tables use colour only
on a terminal (and never with ``celery --no-color``).

Exit codes: ``0`` done; ``1`` the operation failed (no such entry, stale version, aborted,
a stored record that cannot be read, ``validate`` found problems); ``2`` bad input (a schedule,
a definition, a usage mistake); ``3`` Redis is not configured or cannot be reached (or, for
``trigger``, the broker). Errors are one line on stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
import redis
from celery.bin.base import CeleryCommand

from .backends.factory import redis_url_for
from .backends.redis_connection import mask_url, scrub_secrets
from .config import has_control_characters, read_settings
from .errors import BackendUnavailableError, ConfigError, ForkSchedulerError, ScheduleError
from .manager import (
    BrokerUnavailableError,
    EntryStats,
    Job,
    JobNotFoundError,
    Manager,
    RedisRequiredError,
    ReplicaInfo,
    StoredRecordError,
)
from .schedules import Interval, SlotSchedule, coerce_schedule
from .store import StaleVersionError
from .validation import Problem

__all__ = ["schedule"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_REDIS = 3

#: The most next runs or history items a command computes or reads.
MAX_COUNT = 10_000
_OUTCOME_COLOURS = {"sent": "green", "completed": "green", "error": "red", "failed": "red"}
_SKIP_REASONS = {
    "busy": "still running",
    "capped": "concurrency cap reached",
    "paused": "the entry is paused (--force runs it anyway)",
}

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------
# errors: one line, an exit code, passwords masked, control characters escaped
# --------------------------------------------------------------------------------------------


class CommandError(click.ClickException):
    """A user-facing failure: one line on stderr (passwords masked), exit code 1."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(_safe(_scrub(message)))


class BadInputError(CommandError):
    """A bad schedule, definition or usage: exit code 2."""

    exit_code = EXIT_BAD_INPUT


class RedisUnavailableError(CommandError):
    """Redis is not configured or cannot be reached (or the broker, to send a run): exit 3."""

    exit_code = EXIT_NO_REDIS


def _scrub(text: str) -> str:
    """``text`` with any password inside a URL replaced by ``**``."""
    return scrub_secrets(text)


def _safe(text: str) -> str:
    """``text`` with control characters (ESC, BEL, NUL, newlines, bidirectional overrides…)
    shown as escapes, so that stored text cannot steer the operator's terminal."""
    if not has_control_characters(text):
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if has_control_characters(ch) else ch
        for ch in text
    )


def _redis_location(app: Any) -> str:
    try:
        url = redis_url_for(app, read_settings(app.conf))
    except ConfigError:
        url = None
    return f"Redis at {mask_url(url)}" if url else "Redis"


def _translate(app: Any, exc: Exception) -> CommandError | None:
    """The one-line error for a known failure, or ``None`` to let it propagate."""
    if isinstance(exc, (JobNotFoundError, StaleVersionError, StoredRecordError)):
        return CommandError(str(exc))
    if isinstance(exc, (ScheduleError, ConfigError)):
        return BadInputError(str(exc))
    if isinstance(exc, (RedisRequiredError, BrokerUnavailableError)):
        return RedisUnavailableError(str(exc))
    if isinstance(exc, (redis.RedisError, BackendUnavailableError)):
        return RedisUnavailableError(f"cannot reach {_redis_location(app)}: {exc}")
    if isinstance(exc, ForkSchedulerError):
        return CommandError(str(exc))
    return None


class _OnceHandler(logging.Handler):
    """Prints each distinct warning the package logs once, as a ``warning:`` line. Its errors
    are about stored records that the commands report themselves, one line each."""

    def __init__(self, no_color: bool) -> None:
        super().__init__(logging.WARNING)
        self.no_color = no_color
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno < logging.ERROR and message not in self.seen:
            self.seen.add(message)
            text = click.style(f"warning: {_safe(_scrub(message))}", fg="yellow")
            click.echo(text, err=True, color=False if self.no_color else None)


@contextlib.contextmanager
def _logs_as_warnings(ctx: click.Context) -> Iterator[None]:
    """While a command runs, the package's log records do not reach the logging set-up (which,
    unset, prints them on stderr): its warnings are ``warning:`` lines, once each, escaped,
    passwords masked; a bad stored record is the one line its command prints."""
    logger = logging.getLogger("celery_fork_scheduler")
    handler = _OnceHandler(bool(getattr(ctx.find_root().obj, "no_color", False)))
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class ScheduleGroup(click.Group):
    """The ``schedule`` group: turns known failures and usage mistakes into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _logs_as_warnings(ctx):
                return super().invoke(ctx)
        except CommandError:
            raise
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            raise BadInputError(f"{exc.format_message()} (see '{command} --help')") from None
        except Exception as exc:
            error = _translate(_app(ctx), exc)
            if error is None:
                raise
            raise error from None


# --------------------------------------------------------------------------------------------
# session: the app, the clock (read once per command), output
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Session:
    """What one command runs with: the app, the moment it started, how to print."""

    app: Any
    now: datetime
    no_color: bool
    as_json: bool

    def manager(self) -> Manager:
        return Manager(self.app, clock=lambda: self.now)

    def emit(self, data: Any, render: Callable[[], str]) -> None:
        """Print ``data`` as JSON with ``--json``, else the text ``render`` builds."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            click.echo(render(), color=False if self.no_color else None)

    def warn(self, message: str) -> None:
        click.echo(
            click.style(f"warning: {_safe(_scrub(message))}", fg="yellow"),
            err=True,
            color=False if self.no_color else None,
        )


def _app(ctx: click.Context) -> Any:
    obj = ctx.find_root().obj
    app = getattr(obj, "app", None)
    if app is None:
        from celery import current_app

        app = current_app
    return app


def _session(ctx: click.Context, as_json: bool) -> Session:
    obj = ctx.find_root().obj
    return Session(
        app=_app(ctx),
        now=datetime.now(timezone.utc),
        no_color=bool(getattr(obj, "no_color", False)),
        as_json=as_json,
    )


def _json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(
        function
    )


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _span(seconds: float) -> str:
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


def _relative(moment: datetime, now: datetime) -> str:
    seconds = (moment - now).total_seconds()
    return f"in {_span(seconds)}" if seconds >= 0 else f"{_span(seconds)} ago"


def _local(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _zone_of(schedule: SlotSchedule) -> ZoneInfo:
    return schedule.zone


def _zone_column(schedule: SlotSchedule) -> str:
    """The zone a schedule follows; ``-`` for an interval, which ignores zones."""
    return "-" if isinstance(schedule, Interval) else schedule.zone.key


def _entry_names(session: Session) -> set[str]:
    """The static entries, and the runtime ones when Redis answers (for a hint only)."""
    names = set(session.app.conf.beat_schedule or {})
    with contextlib.suppress(Exception):
        names.update(job.name for job in session.manager().jobs())
    return names


Cell = str | tuple[str, str]


def _table(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    """Left-aligned columns; a cell ``(text, colour)`` is coloured after padding."""
    cells = [
        [(_safe(c), "") if isinstance(c, str) else (_safe(c[0]), c[1]) for c in row] for row in rows
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


def _fields(pairs: Sequence[tuple[str, Cell]]) -> str:
    width = max(len(label) for label, _ in pairs)
    lines = []
    for label, value in pairs:
        text, colour = (value, "") if isinstance(value, str) else value
        text = _safe(text)
        lines.append(f"{label.ljust(width)}  {click.style(text, fg=colour) if colour else text}")
    return "\n".join(lines)


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


def _outcome_colour(outcome: str) -> str:
    if outcome.startswith("skipped"):
        return "yellow"
    return _OUTCOME_COLOURS.get(outcome, "")


def _job_data(job: Job) -> dict[str, Any]:
    zone = _zone_of(job.schedule)
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
        "paused_at": _iso(job.paused_at),
        "overlap": job.overlap,
        "singleton": job.overlap != "allow",
        "next_run": _iso(job.next_run),
        "next_run_local": _iso(job.next_run.astimezone(zone)) if job.next_run else None,
        "last_run": _iso(job.last_run),
        "last_outcome": job.last_outcome,
        "run_count": job.run_count,
        "finished": job.finished,
        "version": job.version,
        "args": list(job.args),
        "kwargs": dict(job.kwargs),
        "options": dict(job.options),
        "description": job.description,
    }


def _next_text(job: Job, now: datetime) -> str:
    if job.next_run is None:
        return "never"
    return f"{_local(job.next_run, _zone_of(job.schedule))} ({_relative(job.next_run, now)})"


def _last_text(job: Job, now: datetime) -> Cell:
    if job.last_run is None:
        return "-"
    text = _relative(job.last_run, now)
    if job.last_outcome:
        return (f"{text} ({job.last_outcome})", _outcome_colour(job.last_outcome))
    return text


def _history_table(items: Sequence[Mapping[str, Any]], zone: tzinfo, now: datetime) -> str:
    rows: list[list[Cell]] = []
    for item in items:
        if "raw" in item:
            rows.append(["?", "?", "", "", "", "", _scrub(str(item["raw"]))])
            continue
        slot = item.get("slot")
        at = item.get("at")
        outcome = str(item.get("outcome", ""))
        duration = item.get("duration")
        slot_time, at_time = _stored_time(slot), _stored_time(at)
        rows.append(
            [
                _local(slot_time, zone) if slot_time else str(slot if slot is not None else "-"),
                (outcome, _outcome_colour(outcome)),
                _relative(at_time, now) if at_time else str(at if at is not None else "-"),
                f"{duration:.2f}s" if isinstance(duration, (int, float)) else "",
                str(item.get("task_id", "")),
                str(item.get("replica", "")),
                _scrub(str(item.get("error", ""))),
            ]
        )
    return _table(["SLOT", "OUTCOME", "AT", "DURATION", "TASK ID", "BY", "ERROR"], rows)


def _history_data(item: dict[str, Any]) -> dict[str, Any]:
    """A history item with any URL credentials in its error text masked."""
    for key in ("error", "raw"):
        if isinstance(item.get(key), str):
            item[key] = _scrub(item[key])
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


def _counters(stats: EntryStats) -> dict[str, int]:
    counters = {
        "runs": stats.runs,
        "completed": stats.completed,
        "errors": stats.errors,
        "failures": stats.failures,
    }
    counters.update({f"skips:{reason}": n for reason, n in sorted(stats.skips.items())})
    return counters


def _one_of(name: str | None, tag: str | None) -> None:
    if (name is None) == (tag is None):
        raise BadInputError("give either a NAME or --tag TAG, not both or neither")


def _check_task_known(session: Session, task: str) -> None:
    session.app.loader.import_default_modules()
    if task not in session.app.tasks:
        session.warn(f"task {task!r} is not registered in this app (a typo?)")


def _count(n: int, noun: str) -> str:
    """``"1 entry"``, ``"3 entries"``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def _names_text(names: Sequence[str]) -> str:
    return _safe(", ".join(names)) if names else "-"


# --------------------------------------------------------------------------------------------
# the group and its commands
# --------------------------------------------------------------------------------------------


@click.group(cls=ScheduleGroup)
def schedule() -> None:
    """See and steer the fork scheduler's schedule (every beat replica, through Redis)."""


@schedule.command("list", cls=CeleryCommand)
@click.option("--tag", help="Only entries with this tag.")
@click.option("--paused", is_flag=True, help="Only paused entries.")
@_json_option
@click.pass_context
def list_(ctx: click.Context, tag: str | None, paused: bool, as_json: bool) -> None:
    """Every entry (config, @periodic and runtime) with its next and last run."""
    session = _session(ctx, as_json)
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
                job.schedule_text,
                _zone_column(job.schedule),
                ",".join(sorted(job.tags)) or "-",
                _next_text(job, session.now),
                _last_text(job, session.now),
                str(job.run_count),
                _state(job),
                job.source,
            ]
            for job in jobs
        ]
        headers = ["NAME", "SCHEDULE", "TZ", "TAGS", "NEXT RUN", "LAST RUN", "RUNS", "STATE"]
        return _table([*headers, "SOURCE"], rows)

    session.emit([_job_data(job) for job in jobs], render)


@schedule.command("show", cls=CeleryCommand)
@click.argument("name")
@click.option(
    "-n",
    "count",
    default=10,
    show_default=True,
    type=click.IntRange(1, MAX_COUNT),
    help="How many next runs.",
)
@_json_option
@click.pass_context
def show(ctx: click.Context, name: str, count: int, as_json: bool) -> None:
    """The full definition of one entry, its next runs, counters and last runs."""
    session = _session(ctx, as_json)
    manager = session.manager()
    job = manager.get(name)
    slots = [] if job.finished else manager.next_runs(name, count, after=session.now)
    try:
        counters = _counters(manager.stats(name))
        history = [_history_data(item.to_dict()) for item in manager.history_items(name, 10)]
    except RedisRequiredError:
        counters, history = {}, []
    zone = _zone_of(job.schedule)
    data = {
        **_job_data(job),
        **_limits_data(job),
        "next_runs": [slot.isoformat() for slot in slots],
        "counters": counters,
        "history": history,
    }

    def render() -> str:
        paused: Cell = _state(job)
        if job.finished:
            paused = (f"finished (max runs {job.max_runs} reached)", "blue")
        elif job.paused:
            since = f" since {_local(job.paused_at, zone)}" if job.paused_at else ""
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
            ("starts", _local(job.start_at, zone) if job.start_at else "-"),
            ("ends", _local(job.end_at, zone) if job.end_at else "-"),
            ("max runs", str(job.max_runs) if job.max_runs is not None else "-"),
            ("catchup", _catchup_text(job)),
            ("tags", ", ".join(sorted(job.tags)) or "-"),
            ("args", json.dumps(list(job.args), default=str)),
            ("kwargs", json.dumps(dict(job.kwargs), default=str)),
            ("options", json.dumps(dict(job.options), default=str)),
            ("description", job.description or "-"),
            ("version", str(job.version)),
        ]
        parts = [_fields(pairs), "", f"next {len(slots)} runs"]
        parts += [f"  {_local(slot, zone)}  ({_relative(slot, session.now)})" for slot in slots]
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
        "start_at": _iso(job.start_at),
        "end_at": _iso(job.end_at),
        "max_runs": job.max_runs,
        "catchup": job.catchup,
        "catchup_window_seconds": window.total_seconds() if window is not None else None,
    }


def _catchup_text(job: Job) -> str:
    window = job.catchup_window
    return job.catchup + (f" (window {_span(window.total_seconds())})" if window else "")


@schedule.command("next", cls=CeleryCommand)
@click.argument("expression")
@click.option("-n", "count", default=10, show_default=True, type=click.IntRange(1, MAX_COUNT))
@click.option("--tz", "zone", help="IANA time zone (default: the app's timezone).")
@_json_option
@click.pass_context
def next_(ctx: click.Context, expression: str, count: int, zone: str | None, as_json: bool) -> None:
    """Preview the next runs of any schedule string or cron expression (no Redis needed)."""
    session = _session(ctx, as_json)
    try:
        parsed = coerce_schedule(expression, default_tz=session.app.timezone)
    except ScheduleError:
        if expression in _entry_names(session):
            raise BadInputError(
                f"{expression!r} is an entry, not a schedule: its next runs are in "
                f"'celery schedule show {expression}'"
            ) from None
        raise
    if zone is not None:
        parsed = parsed.with_timezone(zone)
    parsed.validate()
    slots: list[datetime] = []
    after = session.now
    while len(slots) < count:
        slot = parsed.next_slot(after)
        if slot is None:
            break
        slots.append(slot)
        after = slot
    shown = _zone_of(parsed)
    data = {
        "expression": expression,
        "schedule": parsed.describe(),
        "timezone": shown.key,
        "slots": [{"utc": s.isoformat(), "local": s.astimezone(shown).isoformat()} for s in slots],
    }

    def render() -> str:
        lines = [_safe(f"{parsed.describe()}  ({shown.key})")]
        width = len(str(len(slots)))
        for index, slot in enumerate(slots, 1):
            lines.append(
                f"  {str(index).rjust(width)}  {_local(slot, shown)}  "
                f"{slot.strftime('%Y-%m-%d %H:%M:%S')} UTC  ({_relative(slot, session.now)})"
            )
        if len(slots) < count:
            lines.append("  (no further runs)")
        return "\n".join(lines)

    session.emit(data, render)


def _json_value(kind: type, what: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            decoded = json.loads(value)
        except ValueError as exc:
            raise BadInputError(f"--{param.name}: not valid JSON: {exc}") from None
        except RecursionError:
            raise BadInputError(f"--{param.name}: JSON nested too deeply") from None
        if not isinstance(decoded, kind):
            raise BadInputError(f"--{param.name}: expected a JSON {what}")
        return decoded

    return convert


@schedule.command("add", cls=CeleryCommand)
@click.argument("name")
@click.argument("task")
@click.argument("schedule_text", metavar="SCHEDULE")
@click.option("--args", callback=_json_value(list, "array"), help="Positional args, JSON array.")
@click.option("--kwargs", callback=_json_value(dict, "object"), help="Keyword args, JSON object.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for several).")
@click.option("--singleton", is_flag=True, help="Never run twice at once across the cluster.")
@click.option("--queue", help="The queue to send the task to.")
@click.option("--tz", "zone", help="IANA time zone of the schedule.")
@click.option("--description", default="", help="Free text shown by list/show.")
@click.option("--replace", is_flag=True, help="Replace a runtime entry of the same name.")
@_json_option
@click.pass_context
def add(
    ctx: click.Context,
    name: str,
    task: str,
    schedule_text: str,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    tags: tuple[str, ...],
    singleton: bool,
    queue: str | None,
    zone: str | None,
    description: str,
    replace: bool,
    as_json: bool,
) -> None:
    """Add a runtime entry; every beat replica picks it up within a second."""
    session = _session(ctx, as_json)
    policies: dict[str, Any] = {"description": description}
    if tags:
        policies["tags"] = list(tags)
    if singleton:
        policies["singleton"] = True
    if queue:
        policies["options"] = {"queue": queue}
    if zone:
        policies["timezone"] = zone
    job = session.manager().add(
        name,
        task,
        schedule_text,
        args=args or (),
        kwargs=kwargs,
        replace_existing=replace,
        **policies,
    )
    _check_task_known(session, task)
    session.emit(
        _job_data(job),
        lambda: _safe(
            f"added {job.name!r}: {job.schedule_text}, next run {_next_text(job, session.now)}"
        ),
    )


@schedule.command("remove", cls=CeleryCommand)
@click.argument("name", required=False)
@click.option("--tag", help="Remove every runtime entry with this tag.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_json_option
@click.pass_context
def remove(ctx: click.Context, name: str | None, tag: str | None, yes: bool, as_json: bool) -> None:
    """Remove a runtime entry, or every runtime entry with a tag (static entries stay)."""
    _one_of(name, tag)
    session = _session(ctx, as_json)
    manager = session.manager()
    if name is not None:
        manager.remove(name)
        session.emit({"removed": [name]}, lambda: f"removed {name!r}")
        return
    assert tag is not None
    tagged = manager.jobs(tag)
    runtime = [job.name for job in tagged if job.source == "runtime"]
    static = [job.name for job in tagged if job.source != "runtime"]
    if not runtime:
        kept = f" (static entries cannot be removed, pause them: {_names_text(static)})"
        raise CommandError(f"no runtime entries tagged {tag!r}" + (kept if static else ""))
    if not yes:
        question = f"Remove {_count(len(runtime), 'runtime entry')} tagged {tag!r}"
        click.confirm(f"{question} ({_names_text(runtime)})?", abort=True, err=True)
    removed = manager.remove_by_tag(tag)
    if static:
        session.warn(f"static entries stay (pause them instead): {_names_text(static)}")
    session.emit(
        {"removed": removed, "kept_static": static},
        lambda: f"removed {_count(len(removed), 'entry')} tagged {tag!r}: {_names_text(removed)}",
    )


def _steer(
    ctx: click.Context,
    verb: str,
    action: Callable[[Manager], list[str]],
    *,
    name: str | None,
    tag: str | None,
    confirm: bool,
    as_json: bool,
) -> None:
    _one_of(name, tag)
    session = _session(ctx, as_json)
    manager = session.manager()
    if tag is not None:
        names = [job.name for job in manager.jobs(tag)]
        if not names:
            raise CommandError(f"no entries tagged {tag!r}")
        if confirm:
            question = f"{verb.capitalize()} {_count(len(names), 'entry')} tagged {tag!r}"
            click.confirm(f"{question} ({_names_text(names)})?", abort=True, err=True)
    done = action(manager)
    what = f"{name!r}" if name is not None else f"{_count(len(done), 'entry')} tagged {tag!r}"
    session.emit(
        {f"{verb}d": done}, lambda: f"{verb}d {what}" + (f": {_names_text(done)}" if tag else "")
    )


@schedule.command("pause", cls=CeleryCommand)
@click.argument("name", required=False)
@click.option("--tag", help="Pause every entry with this tag.")
@click.option("--note", default="", help="Why (shown by list and show).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (with --tag).")
@_json_option
@click.pass_context
def pause(
    ctx: click.Context, name: str | None, tag: str | None, note: str, yes: bool, as_json: bool
) -> None:
    """Pause an entry (or every entry with a tag) on every replica, at once."""
    _steer(
        ctx,
        "pause",
        lambda manager: manager.pause(name, tag=tag, note=note),
        name=name,
        tag=tag,
        confirm=not yes,
        as_json=as_json,
    )


@schedule.command("resume", cls=CeleryCommand)
@click.argument("name", required=False)
@click.option("--tag", help="Resume every entry with this tag.")
@_json_option
@click.pass_context
def resume(ctx: click.Context, name: str | None, tag: str | None, as_json: bool) -> None:
    """Resume a paused entry (or every entry with a tag)."""
    _steer(
        ctx,
        "resume",
        lambda manager: manager.resume(name, tag=tag),
        name=name,
        tag=tag,
        confirm=False,
        as_json=as_json,
    )


@schedule.command("trigger", cls=CeleryCommand)
@click.argument("name")
@click.option("--force", is_flag=True, help="Run it even if the entry is paused.")
@_json_option
@click.pass_context
def trigger(ctx: click.Context, name: str, force: bool, as_json: bool) -> None:
    """Run an entry now: not if paused (unless --force), nor while a singleton still runs,
    nor over the cap; it does not count towards max_runs."""
    session = _session(ctx, as_json)
    try:
        result = session.manager().trigger(name, force=force)
    except TypeError as exc:  # Celery checks the arguments against the task's signature
        raise BadInputError(f"cannot send {name!r}: {exc}") from None
    except (redis.RedisError, BackendUnavailableError) as exc:  # raised before any send
        location = _redis_location(session.app)
        raise RedisUnavailableError(f"cannot reach {location}: {exc}; nothing was sent") from None
    warning = (
        f"the run was not recorded in Redis: {result.unrecorded}" if result.unrecorded else None
    )
    if warning is not None:
        session.warn(f"sent, but {warning}")
    data = {
        "name": name,
        "task_id": result.task_id,
        "skipped": result.task_id is None,
        "reason": result.skipped,
        "warning": warning,
    }
    session.emit(
        data,
        lambda: (
            f"skipped: {_SKIP_REASONS[result.skipped]}"
            if result.skipped
            else f"sent {name!r}: task id {result.task_id}"
        ),
    )


@schedule.command("history", cls=CeleryCommand)
@click.argument("name")
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(1, MAX_COUNT))
@_json_option
@click.pass_context
def history(ctx: click.Context, name: str, count: int, as_json: bool) -> None:
    """The latest runs of an entry, newest first (as many as fork_scheduler_history_size)."""
    session = _session(ctx, as_json)
    manager = session.manager()
    job = manager.get(name)
    items = [_history_data(item.to_dict()) for item in manager.history_items(name, count)]
    session.emit(
        items,
        lambda: (
            _history_table(items, _zone_of(job.schedule), session.now)
            if items
            else "no history yet"
        ),
    )


# --------------------------------------------------------------------------------------------
# replicas
# --------------------------------------------------------------------------------------------


@schedule.command("replicas", cls=CeleryCommand)
@click.option(
    "--within",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Only replicas that ticked within this many seconds.",
)
@_json_option
@click.pass_context
def replicas(ctx: click.Context, within: float, as_json: bool) -> None:
    """The beat replicas seen recently: last tick, runtime version, entries."""
    session = _session(ctx, as_json)
    manager = session.manager()
    current = manager.store().version()
    everyone = manager.replicas(within=math.inf)
    shown = [replica for replica in everyone if replica.seen_within(within)]
    hidden = len(everyone) - len(shown)
    data = {
        "runtime_version": current,
        "replicas": [_replica_data(replica) for replica in shown],
        "hidden_older": hidden,
    }

    def render() -> str:
        lines = []
        if shown:
            rows: list[list[Cell]] = [
                [
                    r.id,
                    _local(r.last_tick, timezone.utc) if r.last_tick else "-",
                    f"{_span(r.age)} ago" if r.age is not None else "-",
                    str(r.runtime_version),
                    str(r.entries),
                    ("stale", "yellow") if r.stale else ("live", "green"),
                ]
                for r in shown
            ]
            headers = ["REPLICA", "LAST TICK", "AGE", "VERSION", "ENTRIES", "STATUS"]
            lines.append(_table(headers, rows))
        else:
            lines.append(f"no beat replica ticked in the last {_span(within)}")
        lines.append(f"runtime version in Redis: {current}")
        if hidden:
            lines.append(f"{_count(hidden, 'older record')} hidden (see --within)")
        return "\n".join(lines)

    session.emit(data, render)


def _replica_data(replica: ReplicaInfo) -> dict[str, Any]:
    return {
        "id": replica.id,
        "hostname": replica.hostname,
        "pid": replica.pid,
        "last_tick": _iso(replica.last_tick),
        "age_seconds": round(replica.age, 3) if replica.age is not None else None,
        "runtime_version": replica.runtime_version,
        "entries": replica.entries,
        "status": "stale" if replica.stale else "live",
    }


# --------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------


@schedule.command("validate", cls=CeleryCommand)
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
@_json_option
@click.pass_context
def validate(ctx: click.Context, strict: bool, as_json: bool) -> None:
    """Check settings, config, @periodic and Redis entries; exit 1 when anything is wrong."""
    session = _session(ctx, as_json)
    report = session.manager().check_report()
    errors, warnings = report.errors, report.warnings
    ok = not errors and not (strict and warnings)
    data = {
        "ok": ok,
        "entries": len(report.valid),
        "errors": [_problem_data(p) for p in errors],
        "warnings": [_problem_data(p) for p in warnings],
    }

    def render() -> str:
        lines = [
            click.style(
                f"{p.severity}: ", fg="red" if p.severity == "error" else "yellow", bold=True
            )
            + _safe(_scrub(p.message))
            for p in report.problems
        ]
        summary = (
            f"{_count(len(report.valid), 'valid entry')}, {_count(len(errors), 'error')}, "
            f"{_count(len(warnings), 'warning')}"
        )
        lines.append(click.style(summary, fg="green" if ok else "red"))
        return "\n".join(lines)

    session.emit(data, render)
    if not ok:
        ctx.exit(EXIT_FAILED)


def _problem_data(problem: Problem) -> dict[str, Any]:
    return {
        "level": problem.severity,
        "message": _scrub(problem.message),
        "entry": problem.entry,
        "field": problem.field,
        "source": problem.source,
    }
