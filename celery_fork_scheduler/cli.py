"""``celery -A proj schedule ...``: see and steer the schedule from a terminal.

A thin click layer over :class:`~celery_fork_scheduler.Manager`, registered through the
``celery.commands`` entry-point group. Every command takes ``--json``; tables use colour only
on a terminal (and never with ``celery --no-color``).

Exit codes: ``0`` done; ``1`` the operation failed (no such entry, stale version, aborted,
``validate`` found problems); ``2`` bad input (a schedule, a definition, a usage mistake);
``3`` Redis is not configured or cannot be reached. Errors are one line on stderr.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
import redis
from celery.bin.base import CeleryCommand

from .backends.factory import redis_client_for, redis_url_for
from .backends.redis_connection import mask_url
from .config import Settings, read_settings
from .decorators import REGISTRY_ATTRIBUTE
from .entry import Entry, EntrySource, entry_from_config, entry_from_dict
from .errors import BackendUnavailableError, ConfigError, ForkSchedulerError, ScheduleError
from .keys import Keys
from .manager import Job, JobNotFoundError, Manager, RedisRequiredError
from .schedules import SlotSchedule, coerce_schedule
from .store import RuntimeStore, StaleVersionError, StoredEntry

__all__ = ["schedule"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_REDIS = 3

#: A replica announces itself every 5 s; one silent for longer than this is shown as stale.
LIVE_SECONDS = 15.0

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_PASSWORD_IN_URL = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_OUTCOME_COLOURS = {"sent": "green", "completed": "green", "error": "red", "failed": "red"}

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------
# errors: one line, an exit code, passwords masked
# --------------------------------------------------------------------------------------------


class CommandError(click.ClickException):
    """A user-facing failure: one line on stderr (passwords masked), exit code 1."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(_scrub(message))


class BadInputError(CommandError):
    """A bad schedule, definition or usage: exit code 2."""

    exit_code = EXIT_BAD_INPUT


class RedisUnavailableError(CommandError):
    """Redis is not configured or cannot be reached: exit code 3."""

    exit_code = EXIT_NO_REDIS


def _scrub(text: str) -> str:
    """``text`` with any password inside a URL replaced by ``**``."""
    return _PASSWORD_IN_URL.sub(r"\1**@", text)


def _redis_location(app: Any) -> str:
    try:
        url = redis_url_for(app, read_settings(app.conf))
    except ConfigError:
        url = None
    return f"Redis at {mask_url(url)}" if url else "Redis"


def _translate(app: Any, exc: Exception) -> CommandError | None:
    """The one-line error for a known failure, or ``None`` to let it propagate."""
    if isinstance(exc, (ScheduleError, ConfigError)):
        return BadInputError(str(exc))
    if isinstance(exc, (JobNotFoundError, StaleVersionError)):
        return CommandError(str(exc))
    if isinstance(exc, RedisRequiredError):
        return RedisUnavailableError(str(exc))
    if isinstance(exc, (redis.RedisError, BackendUnavailableError)):
        return RedisUnavailableError(f"cannot reach {_redis_location(app)}: {exc}")
    if isinstance(exc, ForkSchedulerError):
        return CommandError(str(exc))
    return None


class ScheduleGroup(click.Group):
    """The ``schedule`` group: turns known failures and usage mistakes into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
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
            click.style(f"warning: {message}", fg="yellow"),
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


def _from_microseconds(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return _EPOCH + timedelta(microseconds=int(value))


def _zone_of(schedule: SlotSchedule) -> ZoneInfo:
    return schedule.zone


Cell = str | tuple[str, str]


def _table(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    """Left-aligned columns; a cell ``(text, colour)`` is coloured after padding."""
    cells = [[(c, "") if isinstance(c, str) else c for c in row] for row in rows]
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
        lines.append(f"{label.ljust(width)}  {click.style(text, fg=colour) if colour else text}")
    return "\n".join(lines)


def _state(job: Job) -> Cell:
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


def _history_item(raw: bytes | str) -> dict[str, Any]:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    try:
        item = json.loads(text)
    except ValueError:
        return {"raw": text}
    if not isinstance(item, dict):
        return {"raw": text}
    for key in ("slot", "at"):
        moment = _from_microseconds(item.get(key))
        if moment is not None:
            item[key] = moment.isoformat()
    return item


def _history_table(items: Sequence[Mapping[str, Any]], zone: tzinfo, now: datetime) -> str:
    rows: list[list[Cell]] = []
    for item in items:
        if "raw" in item:
            rows.append(["?", "?", "", "", "", "", str(item["raw"])])
            continue
        slot = item.get("slot")
        at = item.get("at")
        outcome = str(item.get("outcome", ""))
        duration = item.get("duration")
        rows.append(
            [
                _local(datetime.fromisoformat(slot), zone) if isinstance(slot, str) else "-",
                (outcome, _outcome_colour(outcome)),
                _relative(datetime.fromisoformat(at), now) if isinstance(at, str) else "-",
                f"{duration:.2f}s" if isinstance(duration, (int, float)) else "",
                str(item.get("task_id", "")),
                str(item.get("replica", "")),
                str(item.get("error", "")),
            ]
        )
    return _table(["SLOT", "OUTCOME", "AT", "DURATION", "TASK ID", "BY", "ERROR"], rows)


def _read_history(manager: Manager, name: str, count: int) -> list[dict[str, Any]]:
    store = manager.store()
    raw = store.client.lrange(store.keys.history(name), 0, max(count, 1) - 1)
    return [_history_item(item) for item in raw]


def _counters(state: Mapping[str, str]) -> dict[str, int]:
    wanted = ("runs", "completed", "errors", "failures")
    counters = {key: int(state.get(key, 0) or 0) for key in wanted}
    for key, value in sorted(state.items()):
        if key.startswith("skips:"):
            counters[key] = int(value or 0)
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
    return ", ".join(names) if names else "-"


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
    jobs = [job for job in session.manager().jobs(tag) if job.paused or not paused]

    def render() -> str:
        if not jobs:
            return "no entries"
        rows = [
            [
                job.name,
                job.schedule_text,
                _zone_of(job.schedule).key,
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
@click.option("-n", "count", default=10, show_default=True, help="How many next runs.")
@_json_option
@click.pass_context
def show(ctx: click.Context, name: str, count: int, as_json: bool) -> None:
    """The full definition of one entry, its next runs, counters and last runs."""
    session = _session(ctx, as_json)
    manager = session.manager()
    job = manager.get(name)
    slots = manager.next_runs(name, count, after=session.now)
    counters = _counters(manager.store().states([name])[name]) if _has_redis(manager) else {}
    history = _read_history(manager, name, 10) if _has_redis(manager) else []
    zone = _zone_of(job.schedule)
    data = {
        **_job_data(job),
        "next_runs": [slot.isoformat() for slot in slots],
        "counters": counters,
        "history": history,
    }

    def render() -> str:
        paused: Cell = _state(job)
        if job.paused:
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
            ("tags", ", ".join(sorted(job.tags)) or "-"),
            ("args", json.dumps(list(job.args), default=str)),
            ("kwargs", json.dumps(dict(job.kwargs), default=str)),
            ("options", json.dumps(dict(job.options), default=str)),
            ("description", job.description or "-"),
            ("version", str(job.version)),
        ]
        parts = [_fields(pairs), "", f"next {len(slots)} runs"]
        parts += [f"  {_local(slot, zone)}  ({_relative(slot, session.now)})" for slot in slots]
        if not slots:
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


def _has_redis(manager: Manager) -> bool:
    try:
        manager.store()
    except RedisRequiredError:
        return False
    return True


@schedule.command("next", cls=CeleryCommand)
@click.argument("expression")
@click.option("-n", "count", default=10, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--tz", "zone", help="IANA time zone (default: the app's timezone).")
@_json_option
@click.pass_context
def next_(ctx: click.Context, expression: str, count: int, zone: str | None, as_json: bool) -> None:
    """Preview the next runs of any schedule string or cron expression (no Redis needed)."""
    session = _session(ctx, as_json)
    parsed = coerce_schedule(expression, default_tz=session.app.timezone)
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
        lines = [f"{parsed.describe()}  ({shown.key})"]
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
        lambda: f"added {job.name!r}: {job.schedule_text}, next run {_next_text(job, session.now)}",
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
@_json_option
@click.pass_context
def trigger(ctx: click.Context, name: str, as_json: bool) -> None:
    """Run an entry now (a singleton still running is not started twice)."""
    session = _session(ctx, as_json)
    try:
        task_id = session.manager().run_now(name)
    except TypeError as exc:  # Celery checks the arguments against the task's signature
        raise BadInputError(f"cannot send {name!r}: {exc}") from None
    data = {"name": name, "task_id": task_id, "skipped": task_id is None}
    if task_id is None:
        session.emit(data, lambda: "skipped: still running (or the concurrency cap is reached)")
    else:
        session.emit(data, lambda: f"sent {name!r}: task id {task_id}")


@schedule.command("history", cls=CeleryCommand)
@click.argument("name")
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(1, 10_000))
@_json_option
@click.pass_context
def history(ctx: click.Context, name: str, count: int, as_json: bool) -> None:
    """The latest runs of an entry, newest first (as many as fork_scheduler_history_size)."""
    session = _session(ctx, as_json)
    manager = session.manager()
    job = manager.get(name)
    items = _read_history(manager, name, count)
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
    store = session.manager().store()
    current = store.version()
    records = [
        _replica(rid, raw, session.now)
        for rid, raw in store.client.hgetall(store.keys.replicas).items()
    ]
    shown = sorted(
        (r for r in records if r["age_seconds"] is None or r["age_seconds"] <= within),
        key=lambda r: r["id"],
    )
    hidden = len(records) - len(shown)
    data = {"runtime_version": current, "replicas": shown, "hidden_older": hidden}

    def render() -> str:
        lines = []
        if shown:
            rows = [
                [
                    r["id"],
                    _local(datetime.fromisoformat(r["last_tick"]), timezone.utc)
                    if r["last_tick"]
                    else "-",
                    f"{_span(r['age_seconds'])} ago" if r["age_seconds"] is not None else "-",
                    str(r["runtime_version"]),
                    str(r["entries"]),
                    (r["status"], "green" if r["status"] == "live" else "yellow"),
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


def _replica(replica_id: bytes | str, raw: bytes | str, now: datetime) -> dict[str, Any]:
    rid = replica_id.decode() if isinstance(replica_id, bytes) else replica_id
    try:
        record = json.loads(raw)
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}
    tick = record.get("last_tick")
    try:
        last = datetime.fromisoformat(tick) if isinstance(tick, str) else None
    except ValueError:
        last = None
    age = (now - last).total_seconds() if last is not None else None
    return {
        "id": rid,
        "hostname": record.get("hostname"),
        "pid": record.get("pid"),
        "last_tick": _iso(last),
        "age_seconds": round(age, 3) if age is not None else None,
        "runtime_version": record.get("runtime_version"),
        "entries": record.get("entries"),
        "status": "live" if age is not None and age <= LIVE_SECONDS else "stale",
    }


# --------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One finding of ``validate``."""

    level: str  # "error" | "warning"
    message: str
    entry: str | None = None
    field: str | None = None
    source: str | None = None


def _config_problem(exc: ConfigError, source: str | None = None) -> Problem:
    return Problem(level="error", message=str(exc), entry=exc.entry, field=exc.field, source=source)


def _static_entries(app: Any) -> tuple[dict[str, Entry], list[Problem]]:
    """Every valid config and @periodic entry, and a problem for each bad one."""
    entries: dict[str, Entry] = {}
    problems: list[Problem] = []
    tables: tuple[tuple[EntrySource, Any], ...] = (
        ("config", app.conf.beat_schedule),
        ("decorator", app.__dict__.get(REGISTRY_ATTRIBUTE)),
    )
    for source, table in tables:
        if not table:
            continue
        if not isinstance(table, Mapping):
            message = f"beat_schedule must be a dict, not {type(table).__name__}"
            problems.append(Problem(level="error", message=message, source=source))
            continue
        for name, definition in table.items():
            if name in entries:
                problems.append(
                    Problem(
                        level="warning",
                        message=f"entry {name!r} is in beat_schedule and @periodic; "
                        "the decorator wins",
                        entry=name,
                        source=source,
                    )
                )
            try:
                entries[name] = entry_from_config(
                    name, definition, default_timezone=app.timezone, source=source
                )
            except ConfigError as exc:
                problems.append(_config_problem(exc, source))
    return entries, problems


def _runtime_entries(
    app: Any, store: RuntimeStore, static: Mapping[str, Entry]
) -> tuple[dict[str, Entry], list[Problem]]:
    entries: dict[str, Entry] = {}
    problems: list[Problem] = []
    _, stored = store.all()
    for name, item in sorted(stored.items()):
        if name in static:
            message = f"runtime entry {name!r} is shadowed by a static entry of that name"
            problems.append(Problem(level="warning", message=message, entry=name, source="runtime"))
        elif not isinstance(item, StoredEntry):
            message = f"entry {name!r}: stored JSON cannot be decoded"
            problems.append(Problem(level="error", message=message, entry=name, source="runtime"))
        else:
            try:
                entries[name] = entry_from_dict(name, item.data, default_timezone=app.timezone)
            except ConfigError as exc:
                problems.append(_config_problem(exc, "runtime"))
    return entries, problems


def _fallback_settings(conf: Mapping[str, Any]) -> Settings:
    """Defaults plus the Redis URL and key prefix, to go on checking despite a bad setting."""
    url = conf.get("fork_scheduler_redis_url")
    prefix = conf.get("fork_scheduler_key_prefix")
    return Settings(
        redis_url=url if isinstance(url, str) and url else None,
        key_prefix=prefix if isinstance(prefix, str) and prefix else Settings().key_prefix,
    )


def _check(app: Any) -> tuple[list[Entry], list[Problem]]:
    """Load the whole schedule entry by entry; every problem found, not only the first."""
    problems: list[Problem] = []
    try:
        settings = read_settings(app.conf)
    except ConfigError as exc:
        problems.append(_config_problem(exc))
        settings = _fallback_settings(app.conf)
    try:
        app.loader.import_default_modules()
    except Exception as exc:  # user code: any import error is a finding, not a crash
        problems.append(
            Problem(level="error", message=f"importing the app's task modules failed: {exc}")
        )
    static, found = _static_entries(app)
    problems += found
    entries = dict(static)
    if settings is not None:
        url = redis_url_for(app, settings)
        if url is None:
            problems.append(
                Problem(
                    level="warning",
                    message="no Redis configured (fork_scheduler_redis_url or a Redis broker): "
                    "beat runs as a single replica; runtime entries and pause are unavailable",
                )
            )
        else:
            try:
                client = redis_client_for(app, settings)
                assert client is not None
                client.ping()
                store = RuntimeStore(client, Keys(settings.key_prefix))
                runtime, found = _runtime_entries(app, store, static)
                problems += found
                entries.update(runtime)
                singletons = [e.name for e in entries.values() if e.singleton]
                if singletons and not client.exists(store.keys.workers_seen):
                    problems.append(
                        Problem(
                            level="warning",
                            message="singleton entries exist but no worker announced that it "
                            "frees singleton markers: call install(app) in the worker "
                            f"({_names_text(singletons)})",
                        )
                    )
            except ConfigError as exc:
                problems.append(_config_problem(exc))
            except (redis.RedisError, OSError) as exc:
                problems.append(
                    Problem(level="error", message=f"cannot reach Redis at {mask_url(url)}: {exc}")
                )
    valid = []
    for entry in sorted(entries.values(), key=lambda e: e.name):
        problem = _task_problem(app, entry)
        if problem is None:
            valid.append(entry)
        else:
            problems.append(problem)
    return valid, problems


def _task_problem(app: Any, entry: Entry) -> Problem | None:
    """An unknown task, or args that do not fit the task's signature."""
    task = app.tasks.get(entry.task)
    if task is None:
        message = (
            f"entry {entry.name!r}: unknown task {entry.task!r} "
            "(not registered in the app after importing its modules)"
        )
        return Problem(
            level="error", message=message, entry=entry.name, field="task", source=entry.source
        )
    check = getattr(task, "__header__", None)
    if not task.typing or check is None or callable(entry.args) or callable(entry.kwargs):
        return None
    try:
        check(*entry.args, **entry.kwargs)
    except TypeError as exc:
        message = f"entry {entry.name!r}: args/kwargs do not fit task {entry.task!r}: {exc}"
        return Problem(
            level="error", message=message, entry=entry.name, field="args", source=entry.source
        )
    return None


@schedule.command("validate", cls=CeleryCommand)
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
@_json_option
@click.pass_context
def validate(ctx: click.Context, strict: bool, as_json: bool) -> None:
    """Check settings, config, @periodic and Redis entries; exit 1 when anything is wrong."""
    session = _session(ctx, as_json)
    entries, problems = _check(session.app)
    errors = [p for p in problems if p.level == "error"]
    warnings = [p for p in problems if p.level == "warning"]
    ok = not errors and not (strict and warnings)
    data = {
        "ok": ok,
        "entries": len(entries),
        "errors": [{**asdict(p), "message": _scrub(p.message)} for p in errors],
        "warnings": [{**asdict(p), "message": _scrub(p.message)} for p in warnings],
    }

    def render() -> str:
        lines = [
            click.style(f"{p.level}: ", fg="red" if p.level == "error" else "yellow", bold=True)
            + _scrub(p.message)
            for p in problems
        ]
        summary = (
            f"{_count(len(entries), 'valid entry')}, {_count(len(errors), 'error')}, "
            f"{_count(len(warnings), 'warning')}"
        )
        lines.append(click.style(summary, fg="green" if ok else "red"))
        return "\n".join(lines)

    session.emit(data, render)
    if not ok:
        ctx.exit(EXIT_FAILED)
