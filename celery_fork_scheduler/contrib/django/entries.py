"""What the admin page shows and does, without Django: the Manager of the configured Celery app,
the rows of the entries page, its filters, one entry's details and the actions.

Every error an operator can cause (a bad name or tag, a note too long, a static entry to remove,
Redis or the broker down) becomes a message with the validator's words, credentials scrubbed;
nothing here raises for bad input.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any, Literal

import redis

from ...backends.redis_connection import scrub_secrets
from ...cli.output import relative
from ...errors import ConfigError, ForkSchedulerError
from ...manager import Manager
from ...manager_results import Job, RunRecord

#: The Django setting that names the Celery app: ``"proj.celery:app"`` (or the app itself).
APP_SETTING = "FORK_SCHEDULER_ADMIN_APP"

#: The actions, by the value posted, with their label.
ACTIONS = {
    "pause": "Pause",
    "resume": "Resume",
    "trigger": "Trigger now",
    "remove": "Remove (runtime entries)",
}
#: What each action needs: ``change`` or ``delete`` (the model's permissions).
ACTION_PERMISSION = {"pause": "change", "resume": "change", "trigger": "change", "remove": "delete"}
#: The states the page filters on.
STATES = ("active", "paused", "disabled", "finished")
#: How many next fires and history items an entry's page shows.
NEXT_FIRES = 10
HISTORY_ITEMS = 25

Level = Literal["success", "warning", "error"]

_managers: weakref.WeakKeyDictionary[Any, Manager] = weakref.WeakKeyDictionary()


def manager_of(setting: object) -> Manager:
    """The Manager of the Celery app that ``setting`` names (``"module:attribute"``, or
    ``"module.attribute"``), or is; Celery's current app when ``None``. ``app.fork_scheduler``
    when ``install(app)`` made it, else one Manager per app, kept."""
    if setting is None:
        from celery import current_app

        app = current_app._get_current_object()
    elif isinstance(setting, str):
        from celery.utils.imports import symbol_by_name

        try:
            app = symbol_by_name(setting)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(
                f"cannot import the Celery app {setting!r}: {type(exc).__name__}: {exc}",
                field=APP_SETTING,
            ) from None
    else:
        app = setting
    if not hasattr(app, "conf"):
        raise ConfigError(f"must name a Celery app, not a {type(app).__name__}", field=APP_SETTING)
    installed = getattr(app, "fork_scheduler", None)
    if isinstance(installed, Manager):
        return installed
    manager = _managers.get(app)
    if manager is None:
        manager = _managers[app] = Manager(app)
    return manager


def error_text(exc: BaseException) -> str:
    """An error as an operator reads it: the validator's message, no credentials."""
    if isinstance(exc, redis.RedisError):
        return scrub_secrets(f"Redis: {type(exc).__name__}: {exc}")
    return scrub_secrets(str(exc) or type(exc).__name__)


#: The errors an action or a read can meet that are the operator's or the cluster's, not a bug.
EXPECTED_ERRORS = (ForkSchedulerError, ValueError, redis.RedisError, OSError)


# -- the entries page --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One entry as the page shows it."""

    job: Job
    now: datetime

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def tags(self) -> list[str]:
        return sorted(self.job.tags)

    @property
    def zone(self) -> str:
        return zone_name(self.job)

    @property
    def state(self) -> str:
        return self.job.state

    @property
    def static(self) -> bool:
        return self.job.source != "runtime"

    @property
    def next_local(self) -> str:
        return local(self.job.next_run, zone_of(self.job)) if self.job.next_run else "never"

    @property
    def next_relative(self) -> str:
        return relative(self.job.next_run, self.now) if self.job.next_run else ""

    @property
    def last_local(self) -> str:
        return local(self.job.last_run, zone_of(self.job)) if self.job.last_run else ""

    @property
    def last_relative(self) -> str:
        return relative(self.job.last_run, self.now) if self.job.last_run else ""

    @property
    def next_parts(self) -> tuple[str, str]:
        """The next fire as (date, time and zone), for a cell that wraps between them."""
        return _parts(self.next_local)

    @property
    def last_parts(self) -> tuple[str, str]:
        return _parts(self.last_local)

    @property
    def outcome_class(self) -> str:
        return outcome_class(self.job.last_outcome)


def _parts(text: str) -> tuple[str, str]:
    day, _, rest = text.partition(" ")
    return day, rest


def select(jobs: Iterable[Job], *, search: str = "", tag: str = "", state: str = "") -> list[Job]:
    """The jobs whose name contains ``search`` (any case), with ``tag``, in ``state``."""
    needle = search.strip().casefold()
    return [
        job
        for job in jobs
        if (not needle or needle in job.name.casefold())
        and (not tag or tag in job.tags)
        and (not state or job.state == state)
    ]


def rows(jobs: Iterable[Job], now: datetime | None = None) -> list[Row]:
    moment = now or datetime.now(timezone.utc)
    return [Row(job, moment) for job in jobs]


# -- one entry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    """One history item: its run record, or its text when it cannot be read."""

    record: RunRecord | None
    text: str
    zone: tzinfo

    @property
    def slot(self) -> str:
        return local(self.record.slot, self.zone) if self.record else ""

    @property
    def at(self) -> str:
        return local(self.record.at, self.zone) if self.record else ""

    @property
    def outcome(self) -> str:
        return self.record.outcome if self.record else "unreadable"

    @property
    def outcome_class(self) -> str:
        return outcome_class(self.outcome)

    @property
    def duration(self) -> str:
        if self.record is None or self.record.duration is None:
            return ""
        return f"{self.record.duration:.3f} s"

    @property
    def error(self) -> str:
        return scrub_secrets(self.record.error if self.record else self.text[:300])


@dataclass(frozen=True)
class Detail:
    """What an entry's page shows."""

    row: Row
    next_fires: list[str]
    history: list[HistoryRow]
    skips: list[tuple[str, int]]
    completed: int
    failures: int
    errors: int
    definition: list[tuple[str, str]]
    problems: list[str]


def detail(manager: Manager, name: str) -> Detail:
    """The entry ``name``: its row, next fires, history, counters and stored definition.
    :class:`~celery_fork_scheduler.manager.JobNotFoundError` when there is none; the parts that
    need Redis are left empty, with the error in ``problems``, when it cannot be reached."""
    job = manager.get(name)
    zone = zone_of(job)
    problems: list[str] = []
    fires: list[str] = []
    if not job.finished:
        fires = [local(slot, zone) for slot in manager.next_runs(name, NEXT_FIRES)]
    history: list[HistoryRow] = []
    counters: dict[str, Any] = {"completed": 0, "failures": 0, "errors": 0, "skips": {}}
    try:
        for item in manager.history_items(name, HISTORY_ITEMS):
            try:
                history.append(HistoryRow(item.record(), item.text, zone))
            except ValueError:
                history.append(HistoryRow(None, item.text, zone))
        stats = manager.stats(name)
        counters = {
            "completed": stats.completed,
            "failures": stats.failures,
            "errors": stats.errors,
            "skips": stats.skips,
        }
    except EXPECTED_ERRORS as exc:
        problems.append(error_text(exc))
    return Detail(
        row=Row(job, datetime.now(timezone.utc)),
        next_fires=fires,
        history=history,
        skips=sorted(counters["skips"].items()),
        completed=counters["completed"],
        failures=counters["failures"],
        errors=counters["errors"],
        definition=definition(job),
        problems=problems,
    )


def definition(job: Job) -> list[tuple[str, str]]:
    """The entry's definition as label/text pairs (JSON for the structured fields)."""
    pairs = [
        ("task", job.task),
        ("schedule", job.schedule_text),
        ("time zone", zone_name(job)),
        ("tags", ", ".join(sorted(job.tags)) or "-"),
        ("source", job.source),
        ("enabled", "yes" if job.enabled else "no"),
        ("overlap", job.overlap),
        ("args", _json(list(job.args))),
        ("kwargs", _json(dict(job.kwargs))),
        ("options", _json(dict(job.options))),
        ("catchup", str(job.catchup)),
    ]
    if job.catchup_window is not None:
        pairs.append(("catchup window", f"{job.catchup_window.total_seconds():g} s"))
    if job.start_at is not None:
        pairs.append(("start at", job.start_at.isoformat()))
    if job.end_at is not None:
        pairs.append(("end at", job.end_at.isoformat()))
    if job.max_runs is not None:
        pairs.append(("max runs", str(job.max_runs)))
    if job.description:
        pairs.append(("description", job.description))
    pairs += [
        ("runs", str(job.run_count)),
        ("manual runs", str(job.manual_runs)),
        ("version", str(job.version) if job.source == "runtime" else "- (static)"),
    ]
    return pairs


def _json(value: object) -> str:
    try:
        return scrub_secrets(json.dumps(value, default=repr, sort_keys=True))
    except (TypeError, ValueError):
        return scrub_secrets(repr(value))


# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One message of an action: its level, its text, and the entries it changed."""

    level: Level
    message: str
    names: tuple[str, ...] = ()


def run_action(
    manager: Manager,
    action: str,
    *,
    names: Sequence[str] = (),
    tag: str = "",
    note: str = "",
) -> list[Outcome]:
    """Run ``action`` (a key of :data:`ACTIONS`) on the entries ``names``, or on every entry
    with ``tag``. Never raises for bad input or an unreachable Redis or broker: every problem is
    an ``error`` outcome with the validator's message."""
    if action not in ACTIONS:
        return [Outcome("error", f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")]
    names = list(dict.fromkeys(name for name in names if name))
    tag = tag.strip()
    if bool(names) == bool(tag):
        return [Outcome("error", "select entries, or give a tag (not both)")]
    try:
        if tag:
            return _by_tag(manager, action, tag, note)
        return _by_name(manager, action, names, note)
    except EXPECTED_ERRORS as exc:
        return [Outcome("error", error_text(exc))]


def _by_name(manager: Manager, action: str, names: list[str], note: str) -> list[Outcome]:
    done: list[str] = []
    outcomes: list[Outcome] = []
    for name in names:
        try:
            if action == "trigger":
                outcomes.append(_trigger(manager, name))
                continue
            if action == "pause":
                manager.pause(name, note=note)
            elif action == "resume":
                manager.resume(name)
            else:
                manager.remove(name)
            done.append(name)
        except EXPECTED_ERRORS as exc:
            outcomes.append(Outcome("error", error_text(exc)))
            if isinstance(exc, ConfigError) and exc.field == "note":
                break  # the same note for every entry: said once
    if done:
        outcomes.insert(0, Outcome("success", _done(action, done, note), tuple(done)))
    return outcomes


def _by_tag(manager: Manager, action: str, tag: str, note: str) -> list[Outcome]:
    static, runtime = manager.tagged(tag)
    if not static and not runtime:
        return [Outcome("warning", f"no entry has the tag {tag!r}")]
    if action == "pause":
        names = manager.pause(tag=tag, note=note)
    elif action == "resume":
        names = manager.resume(tag=tag)
    elif action == "trigger":
        return [_trigger(manager, name) for name in sorted(static + runtime)]
    else:
        names = manager.remove_by_tag(tag)
        outcomes = [Outcome("success", _done(action, names, note), tuple(names))] if names else []
        if static:
            outcomes.append(
                Outcome(
                    "warning",
                    f"static entries with the tag {tag!r} stay (pause them, or remove them "
                    f"from the code): {', '.join(static)}",
                )
            )
        return outcomes
    return [Outcome("success", _done(action, names, note), tuple(names))]


def _trigger(manager: Manager, name: str) -> Outcome:
    result = manager.trigger(name)
    if result.task_id is None:
        why = {
            "paused": "the entry is paused (resume it first)",
            "disabled": "the entry is disabled (enable it first)",
            "busy": "its previous run is still executing (singleton)",
            "capped": "the concurrency cap is reached",
        }.get(result.skipped or "", str(result.skipped))
        return Outcome("warning", f"{name!r} was not triggered: {why}")
    message = f"triggered {name!r} (task id {result.task_id})"
    if result.unrecorded:
        return Outcome(
            "warning",
            f"{message}, but the run was not recorded: {scrub_secrets(result.unrecorded)}",
            (name,),
        )
    return Outcome("success", message, (name,))


def _done(action: str, names: Sequence[str], note: str) -> str:
    verb = {"pause": "paused", "resume": "resumed", "remove": "removed"}[action]
    listed = ", ".join(repr(name) for name in names[:20])
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    noun = "entry" if len(names) == 1 else "entries"
    with_note = f" (note: {note!r})" if action == "pause" and note else ""
    return f"{verb} {len(names)} {noun}: {listed}{more}{with_note}"


# -- times -------------------------------------------------------------------------------------


def zone_of(job: Job) -> tzinfo:
    zone: tzinfo = job.schedule.zone
    return zone


def zone_name(job: Job) -> str:
    return str(getattr(job.schedule.zone, "key", job.schedule.zone))


def local(moment: datetime, zone: tzinfo) -> str:
    """``2026-01-05 09:00:00 CET``: the instant in the entry's zone."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def outcome_class(outcome: str) -> str:
    """The CSS class of an outcome: ``ok``, ``bad``, ``skip`` or ``""``."""
    if outcome in ("sent", "completed", "started"):
        return "ok"
    if outcome in ("failed", "error", "unreadable"):
        return "bad"
    if outcome:
        return "skip"
    return ""
