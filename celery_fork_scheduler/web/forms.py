"""The form that adds or edits a runtime entry.

The form's text is turned into an entry definition and handed to :meth:`Manager.add` (a new
entry) or :meth:`Manager.update` (an edit: only the fields the form changed, so the ones it
does not show, ``max_runs`` or ``start_at``, are kept). Both validate with the code
``celery schedule validate`` runs (:func:`~celery_fork_scheduler.entry.entry_from_config`); its
:class:`~celery_fork_scheduler.errors.ConfigError` names the field, and the message is shown
beside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backends.redis_connection import scrub_secrets
from ..errors import ConfigError, ScheduleError
from ..manager import Manager
from ..manager_results import Job
from ..store import StaleVersionError

#: The fields of the form, in order, with their labels.
FIELDS: Mapping[str, str] = {
    "name": "Name",
    "task": "Task",
    "schedule": "Schedule",
    "timezone": "Time zone",
    "args": "Args (JSON array)",
    "kwargs": "Kwargs (JSON object)",
    "tags": "Tags (comma-separated)",
    "queue": "Queue",
    "description": "Description",
}
#: An error of a field the form does not show is shown at the top of the form.
GENERAL = "_form"


@dataclass(kw_only=True)
class EntryForm:
    """The text of the form's fields, and the errors found, by field."""

    values: dict[str, str] = field(default_factory=lambda: dict.fromkeys(FIELDS, ""))
    singleton: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, form: Mapping[str, str]) -> EntryForm:
        values = {name: str(form.get(name, "")).strip() for name in FIELDS}
        return cls(values=values, singleton=form.get("singleton") in ("on", "1", "true"))

    @classmethod
    def of_job(cls, job: Job) -> EntryForm:
        """The form filled in with a runtime entry, to edit it."""
        return cls(
            values={
                "name": job.name,
                "task": job.task,
                "schedule": job.schedule_text,
                "timezone": job.schedule.zone.key,
                "args": json.dumps(list(job.args), default=str),
                "kwargs": json.dumps(dict(job.kwargs), default=str),
                "tags": ", ".join(sorted(job.tags)),
                "queue": str(job.options.get("queue", "")),
                "description": job.description,
            },
            singleton=job.overlap != "allow",
        )

    def definition(self) -> dict[str, Any]:
        """The entry definition the form says (fields left empty are left out); a field that
        is not what it must be gets its error."""
        v = self.values
        definition: dict[str, Any] = {"task": v["task"], "schedule": v["schedule"]}
        for name, kind, what in (("args", list, "array"), ("kwargs", dict, "object")):
            if not v[name]:
                continue
            try:
                decoded = json.loads(v[name])
            except (ValueError, RecursionError) as exc:
                self.errors[name] = f"not valid JSON: {exc}"
                continue
            if not isinstance(decoded, kind):
                self.errors[name] = f"expected a JSON {what}"
                continue
            definition[name] = decoded
        if v["tags"]:
            definition["tags"] = [tag.strip() for tag in v["tags"].split(",") if tag.strip()]
        if v["timezone"]:
            definition["timezone"] = v["timezone"]
        if v["queue"]:
            definition["options"] = {"queue": v["queue"]}
        definition["description"] = v["description"]
        if self.singleton:
            definition["singleton"] = True
        return definition

    def fail(self, exc: Exception) -> None:
        """Show ``exc`` beside the field it names (at the top when the form has no such
        field)."""
        field_name = getattr(exc, "field", None)
        message = getattr(exc, "reason", None) or str(exc)
        if isinstance(exc, ScheduleError) and field_name is None:
            field_name = "schedule"
        where = field_name if isinstance(field_name, str) and field_name in FIELDS else GENERAL
        if where == GENERAL:
            message = str(exc)
        self.errors[where] = scrub_secrets(str(message))


def add_entry(manager: Manager, form: EntryForm) -> Job | None:
    """Add the form's entry; ``None`` (with the errors in ``form``) when it is not valid."""
    name = form.values["name"]
    if not name:
        form.errors["name"] = "give the entry a name"
    definition = form.definition()
    if form.errors:
        return None
    task, schedule = definition.pop("task"), definition.pop("schedule")
    try:
        job = manager.add(name, task, schedule, **definition)
    except (ConfigError, ScheduleError) as exc:
        form.fail(exc)
        return None
    _check_task(manager, form, job.task)
    return job


def edit_entry(manager: Manager, name: str, form: EntryForm, version: int | None) -> Job | None:
    """Change the runtime entry ``name`` as the form says: only the fields that differ from
    the entry as it is now (``version``: the one the form was filled from; a change made since
    is refused, not overwritten)."""
    current = manager.get(name)
    before = EntryForm.of_job(current)
    form.values["name"] = name
    definition = form.definition()
    if form.errors:
        return None
    changes = {
        key: value
        for key, value in definition.items()
        if form.values[_field_of(key)] != before.values[_field_of(key)]
    }
    changes.pop("singleton", None)
    if form.singleton != before.singleton:
        changes["overlap"] = "skip" if form.singleton else "allow"
    if "options" in changes:
        changes["options"] = {**current.options, **changes["options"]}
    elif form.values["queue"] != before.values["queue"]:
        changes["options"] = {k: v for k, v in current.options.items() if k != "queue"}
    emptied: dict[str, Any] = {"tags": [], "args": [], "kwargs": {}}
    for key, empty in emptied.items():
        if key not in definition and before.values[key] not in ("", "[]", "{}"):
            changes[key] = empty
    if not changes:
        return current
    try:
        job = manager.update(name, expected_version=version, **changes)
    except StaleVersionError:
        form.errors[GENERAL] = (
            "the entry changed since this form was opened: reload it to see the change"
        )
        return None
    except (ConfigError, ScheduleError) as exc:
        form.fail(exc)
        return None
    _check_task(manager, form, job.task)
    return job


def _field_of(key: str) -> str:
    """The form field a definition key comes from (``singleton`` is a checkbox: compared
    apart)."""
    return {"options": "queue", "singleton": "name"}.get(key, key)


def _check_task(manager: Manager, form: EntryForm, task: str) -> None:
    """A warning (as ``schedule add`` prints) when the task is not registered in this app."""
    app = manager.app
    app.loader.import_default_modules()
    if task not in app.tasks:
        form.warnings.append(f"task {task!r} is not registered in this app (a typo?)")
