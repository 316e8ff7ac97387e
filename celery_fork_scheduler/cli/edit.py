"""The commands that steer the schedule: add, remove, pause, resume and trigger."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click
import redis
from celery.bin.base import CeleryCommand

from ..entry import OVERLAPS
from ..errors import BackendUnavailableError
from ..manager import Manager
from ..manager_results import TriggerResult
from .entries_file import SHOWN_NAMES, read_entries
from .output import job_data, next_text, plural, safe
from .session import (
    BadInputError,
    CommandError,
    Session,
    entry_redis_failure,
    json_option,
    session_for,
)

_SKIP_REASONS = {
    "busy": "still running",
    "capped": "concurrency cap reached",
    "paused": "the entry is paused (--force runs it anyway)",
    "disabled": "the entry is disabled (--force runs it anyway)",
}


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


@click.command("add", cls=CeleryCommand)
@click.argument("name", required=False)
@click.argument("task", required=False)
@click.argument("schedule_text", metavar="SCHEDULE", required=False)
@click.option(
    "--file",
    "entries_file",
    metavar="FILE",
    help="Add every entry of a JSON or YAML file (a list of entries with a name, or an "
    "object name -> entry); '-' reads JSON from stdin.",
)
@click.option("--args", callback=_json_value(list, "array"), help="Positional args, JSON array.")
@click.option("--kwargs", callback=_json_value(dict, "object"), help="Keyword args, JSON object.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for several).")
@click.option("--singleton", is_flag=True, help="Never run twice at once across the cluster.")
@click.option("--pause-on-failure", is_flag=True, help="Pause the entry when a run fails for good.")
@click.option("--jitter", help="Publish each slot up to this long after it: 30, 30s, 2 minutes.")
@click.option(
    "--overlap",
    type=click.Choice(OVERLAPS),
    help="What a slot does while the previous run still executes.",
)
@click.option("--queue", help="The queue to send the task to.")
@click.option("--tz", "zone", help="IANA time zone of the schedule.")
@click.option("--description", help="Free text shown by list/show.")
@click.option(
    "--exclude",
    "exclude",
    multiple=True,
    help="An exclusion date: 2026-12-24, 2026-12-24..2027-01-01 or yearly 12-25 (repeat).",
)
@click.option(
    "--calendar",
    "calendars",
    multiple=True,
    help="A calendar of fork_scheduler_calendars whose dates are excluded (repeat).",
)
@click.option("--replace", is_flag=True, help="Replace a runtime entry of the same name.")
@json_option
@click.pass_context
def add(
    ctx: click.Context,
    name: str | None,
    task: str | None,
    schedule_text: str | None,
    entries_file: str | None,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    tags: tuple[str, ...],
    singleton: bool,
    pause_on_failure: bool,
    jitter: str | None,
    overlap: str | None,
    queue: str | None,
    zone: str | None,
    description: str | None,
    exclude: tuple[str, ...],
    calendars: tuple[str, ...],
    replace: bool,
    as_json: bool,
) -> None:
    """Add a runtime entry; every beat replica picks it up within a second. With --file, add
    every entry of a file at once: all are checked first, and none is added if any is bad."""
    if entries_file is not None:
        given = {
            "NAME": name,
            "--args": args,
            "--kwargs": kwargs,
            "--singleton": singleton or None,
            "--pause-on-failure": pause_on_failure or None,
            "--jitter": jitter,
            "--overlap": overlap,
            "--queue": queue,
            "--tz": zone,
            "--description": description,
            "--exclude": exclude or None,
            "--calendar": calendars or None,
        }
        extra = [option for option, value in given.items() if value is not None]
        if extra:
            raise BadInputError(
                f"--file: {', '.join(extra)} cannot be given with it "
                "(set them in the file's entries; --tag and --replace apply to every entry)"
            )
        _add_file(ctx, entries_file, tags, replace, as_json)
        return
    if name is None or task is None or schedule_text is None:
        missing = next(
            label
            for label, value in (("NAME", name), ("TASK", task), ("SCHEDULE", schedule_text))
            if value is None
        )
        raise click.UsageError(
            f"Missing argument '{missing}': give NAME TASK SCHEDULE, or --file FILE", ctx=ctx
        )
    session = session_for(ctx, as_json)
    policies: dict[str, Any] = {"description": description or ""}
    if tags:
        policies["tags"] = list(tags)
    if singleton:
        policies["singleton"] = True
    if pause_on_failure:
        policies["pause_on_failure"] = True
    if jitter is not None:
        policies["jitter"] = _number_or_text(jitter)
    if overlap is not None:
        policies["overlap"] = overlap
    if queue is not None:
        policies["options"] = {"queue": queue}
    if zone is not None:
        policies["timezone"] = zone
    if exclude:
        policies["exclude"] = list(exclude)
    if calendars:
        policies["calendar"] = list(calendars)
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
        job_data(job),
        lambda: safe(
            f"added {job.name!r}: {job.schedule_text}, next run {next_text(job, session.now)}"
        ),
    )


def _number_or_text(value: str) -> float | str:
    """``"30"`` is 30 seconds; other text (``"30s"``, ``"2 minutes"``) is the entry's to check."""
    if not value.isascii():  # float() takes any script's digits; a duration ASCII only
        return value
    try:
        return float(value)
    except ValueError:
        return value


def _add_file(
    ctx: click.Context, path: str, tags: tuple[str, ...], replace: bool, as_json: bool
) -> None:
    definitions = read_entries(path)
    if tags:
        definitions = [_with_tags(definition, tags) for definition in definitions]
    session = session_for(ctx, as_json)
    versions = session.manager().add_many(definitions, replace_existing=replace)
    session.app.loader.import_default_modules()
    unknown = sorted(
        {
            task
            for task in (definition.get("task") for definition in definitions)
            if isinstance(task, str) and task not in session.app.tasks
        }
    )
    if unknown:
        session.warn(
            f"tasks not registered in this app (typos?): {_names_text(unknown[:SHOWN_NAMES])}"
            + (f" and {len(unknown) - SHOWN_NAMES} more" if len(unknown) > SHOWN_NAMES else "")
        )
    names = list(versions)
    shown = _names_text(names[:SHOWN_NAMES]) + (
        f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    )
    where = "stdin" if path == "-" else path
    session.emit(
        {"added": versions},
        lambda: safe(f"added {plural(len(names), 'entry')} from {where}: {shown}"),
    )


def _with_tags(definition: Any, tags: tuple[str, ...]) -> Any:
    """``definition`` with ``tags`` added (anything but a dict with a list of tags is left for
    the Manager to name)."""
    if not isinstance(definition, dict):
        return definition
    present = definition.get("tags") or []
    if not isinstance(present, list):
        return definition
    return {**definition, "tags": [*present, *(tag for tag in tags if tag not in present)]}


def _check_task_known(session: Session, task: str) -> None:
    session.app.loader.import_default_modules()
    if task not in session.app.tasks:
        session.warn(f"task {task!r} is not registered in this app (a typo?)")


@click.command("remove", cls=CeleryCommand)
@click.argument("name", required=False)
@click.option("--tag", help="Remove every runtime entry with this tag.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def remove(ctx: click.Context, name: str | None, tag: str | None, yes: bool, as_json: bool) -> None:
    """Remove a runtime entry, or every runtime entry with a tag (static entries stay)."""
    _one_of(name, tag)
    session = session_for(ctx, as_json)
    manager = session.manager()
    if name is not None:
        manager.remove(name)
        session.emit({"removed": [name]}, lambda: f"removed {name!r}")
        return
    assert tag is not None
    static, runtime = manager.tagged(tag)
    if not runtime:
        kept = f" (static entries cannot be removed, pause them: {_names_text(static)})"
        raise CommandError(f"no runtime entries tagged {tag!r}" + (kept if static else ""))
    if not yes:
        question = f"Remove {plural(len(runtime), 'runtime entry')} tagged {tag!r}"
        click.confirm(f"{question} ({_names_text(runtime)})?", abort=True, err=True)
    removed = manager.remove_by_tag(tag)
    if static:
        session.warn(f"static entries stay (pause them instead): {_names_text(static)}")
    session.emit(
        {"removed": removed, "kept_static": static},
        lambda: f"removed {plural(len(removed), 'entry')} tagged {tag!r}: {_names_text(removed)}",
    )


def _one_of(name: str | None, tag: str | None) -> None:
    if (name is None) == (tag is None):
        raise BadInputError("give either a NAME or --tag TAG, not both or neither")


def _names_text(names: Sequence[str]) -> str:
    return safe(", ".join(names)) if names else "-"


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
    session = session_for(ctx, as_json)
    manager = session.manager()
    if tag is not None:
        static, runtime = manager.tagged(tag)
        names = sorted(static + runtime)
        if not names:
            raise CommandError(f"no entries tagged {tag!r}")
        if confirm:
            question = f"{verb.capitalize()} {plural(len(names), 'entry')} tagged {tag!r}"
            click.confirm(f"{question} ({_names_text(names)})?", abort=True, err=True)
    done = action(manager)
    what = f"{name!r}" if name is not None else f"{plural(len(done), 'entry')} tagged {tag!r}"
    session.emit(
        {f"{verb}d": done}, lambda: f"{verb}d {what}" + (f": {_names_text(done)}" if tag else "")
    )


@click.command("pause", cls=CeleryCommand)
@click.argument("name", required=False)
@click.option("--tag", help="Pause every entry with this tag.")
@click.option("--note", default="", help="Why (shown by list and show).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (with --tag).")
@json_option
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


@click.command("resume", cls=CeleryCommand)
@click.argument("name", required=False)
@click.option("--tag", help="Resume every entry with this tag.")
@json_option
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


@click.command("trigger", cls=CeleryCommand)
@click.argument("name")
@click.option("--force", is_flag=True, help="Run it even if the entry is paused or disabled.")
@json_option
@click.pass_context
def trigger(ctx: click.Context, name: str, force: bool, as_json: bool) -> None:
    """Run an entry now: not if paused or disabled (unless --force), nor while a singleton
    still runs, nor over the cap; it does not count towards max_runs."""
    session = session_for(ctx, as_json)
    try:
        result = session.manager().trigger(name, force=force)
    except TypeError as exc:  # Celery checks the arguments against the task's signature
        raise BadInputError(f"cannot send {name!r}: {exc}") from None
    except (redis.RedisError, BackendUnavailableError) as exc:  # raised before any send
        raise entry_redis_failure(session.app, exc, name, "; nothing was sent") from None
    data = trigger_data(name, result)
    if data["warning"] is not None:
        session.warn(f"sent, but {data['warning']}")
    session.emit(
        data,
        lambda: (
            f"skipped: {_SKIP_REASONS[result.skipped]}"
            if result.skipped
            else f"sent {name!r}: task id {result.task_id}"
        ),
    )


def trigger_data(name: str, result: TriggerResult) -> dict[str, Any]:
    """The ``trigger --json`` shape (``POST /api/entries/<name>/trigger`` too)."""
    warning = (
        f"the run was not recorded in Redis: {result.unrecorded}" if result.unrecorded else None
    )
    return {
        "name": name,
        "task_id": result.task_id,
        "skipped": result.task_id is None,
        "reason": result.skipped,
        "warning": warning,
    }
