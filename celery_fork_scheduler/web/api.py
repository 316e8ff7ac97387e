"""The JSON API under ``/api/``: the shapes of the CLI's ``--json``.

=======================================  =============================================
``GET /api/entries[?tag=T&paused=1]``    ``schedule list --json``
``GET /api/entries/<name>[?n=10]``       ``schedule show --json``
``GET /api/entries/<name>/history``      ``schedule history NAME --json`` (``?n=20``)
``GET /api/replicas[?within=60]``        ``schedule replicas --json``
``GET /api/outages[?n=20]``              ``schedule history --outages --json``
``POST /api/entries``                    ``schedule add --json`` (body: an entry with
                                         its ``name``; ``"replace": true`` to replace)
``DELETE /api/entries/<name>``           ``schedule remove NAME --json``
``POST /api/entries/<name>/pause``       ``schedule pause NAME --json`` (body
                                         ``{"note": "..."}``, optional)
``POST /api/entries/<name>/resume``      ``schedule resume NAME --json``
``POST /api/entries/<name>/trigger``     ``schedule trigger NAME --json`` (body
                                         ``{"force": true}``, optional)
``POST /api/tags/<tag>/pause|resume``    the same with ``--tag``
``POST /api/tags/<tag>/remove``          ``schedule remove --tag T --json``
=======================================  =============================================

Writes need ``Authorization: Bearer <token>`` (401 without, 403 when the dashboard is
read-only). Errors are ``{"error": message, "field": ...}`` with 400 (bad input), 404 (no such
entry), 409 (changed since), 503 (Redis or the broker cannot be reached).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from flask import Blueprint, abort, request

from ..cli.edit import trigger_data
from ..cli.inspection import (
    MAX_WITHIN_SECONDS,
    entry_details,
    history_data,
    replicas_report,
)
from ..cli.output import job_data
from ..errors import ConfigError
from ..manager import MAX_COUNT
from . import security
from .context import dashboard

__all__ = ["blueprint"]

blueprint = Blueprint("api", __name__)

F = TypeVar("F", bound=Callable[..., Any])


def _write(function: F) -> F:
    """Refuse the request unless the dashboard takes writes and it carries the token."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        config = dashboard().config
        if not config.writable:
            abort(403, config.why_read_only)
        if not security.bearer_ok(config):
            abort(401, "writes need the header 'Authorization: Bearer <token>'")
        return function(*args, **kwargs)

    return guarded  # type: ignore[return-value]


def _count(name: str, default: int) -> int:
    value = request.args.get(name, str(default))
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"must be a whole number, not {value[:20]!r}", field=name) from None
    if not 1 <= count <= MAX_COUNT:
        raise ConfigError(f"must be from 1 to {MAX_COUNT}", field=name)
    return count


def _body() -> dict[str, Any]:
    """The JSON object of the request (``{}`` when there is no body)."""
    if not request.get_data(cache=True):
        return {}
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise ConfigError("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body


@blueprint.get("/entries")
def entries() -> Any:
    tag = request.args.get("tag") or None
    paused = request.args.get("paused") in ("1", "true", "yes")
    jobs = [job for job in dashboard().manager.jobs(tag) if job.paused or not paused]
    return [job_data(job) for job in jobs]


def _encoded_in_name(suffix: str) -> bool:
    """Whether the request's last path segment is a name that ends in ``/<suffix>`` with its
    slash encoded (``reports%2Fhistory``): the server decodes ``%2F`` before routing, so that
    request reached the ``.../<suffix>`` route, though it names an entry, not an action."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw:
        return False
    last = urlsplit(raw).path.rsplit("/", 1)[-1]
    return unquote(last) != suffix


@blueprint.get("/entries/<path:name>/history")
def history(name: str) -> Any:
    if _encoded_in_name("history"):
        return entry(f"{name}/history")
    manager = dashboard().manager
    manager.get(name)
    return [history_data(item.to_dict()) for item in manager.history_items(name, _count("n", 20))]


@blueprint.get("/entries/<path:name>")
def entry(name: str) -> Any:
    board = dashboard()
    return entry_details(board.manager, name, board.now(), _count("n", 10)).to_dict()


@blueprint.get("/replicas")
def replicas() -> Any:
    raw = request.args.get("within", "60")
    try:
        within = float(raw)
    except ValueError:
        message = f"must be a number of seconds, not {raw[:20]!r}"
        raise ConfigError(message, field="within") from None
    if not 0 <= within <= MAX_WITHIN_SECONDS:  # NaN and infinity too
        raise ConfigError(
            f"must be a number of seconds from 0 to {MAX_WITHIN_SECONDS:.0f}", field="within"
        )
    return replicas_report(dashboard().manager, within).to_dict()


@blueprint.get("/outages")
def outages() -> Any:
    return [outage.to_dict() for outage in dashboard().manager.outages(_count("n", 20))]


@blueprint.post("/entries")
@_write
def add() -> Any:
    body = _body()
    name = body.pop("name", None)
    task, schedule = body.pop("task", None), body.pop("schedule", None)
    replace = body.pop("replace", False)
    if not isinstance(name, str) or not name:
        raise ConfigError("give the entry's name", field="name")
    if not isinstance(replace, bool):
        raise ConfigError("must be true or false", field="replace")
    job = dashboard().manager.add(name, task, schedule, replace_existing=replace, **body)
    return job_data(job), 201


@blueprint.delete("/entries/<path:name>")
@_write
def remove(name: str) -> Any:
    dashboard().manager.remove(name)
    return {"removed": [name]}


@blueprint.post("/entries/<path:name>/pause")
@_write
def pause(name: str) -> Any:
    _refuse_encoded("pause")
    return {"paused": dashboard().manager.pause(name, note=_note())}


@blueprint.post("/entries/<path:name>/resume")
@_write
def resume(name: str) -> Any:
    _refuse_encoded("resume")
    return {"resumed": dashboard().manager.resume(name)}


@blueprint.post("/entries/<path:name>/trigger")
@_write
def trigger(name: str) -> Any:
    _refuse_encoded("trigger")
    force = _body().get("force", False)
    if not isinstance(force, bool):
        raise ConfigError("must be true or false", field="force")
    return trigger_data(name, dashboard().manager.trigger(name, force=force))


@blueprint.post("/tags/<path:tag>/pause")
@_write
def pause_tag(tag: str) -> Any:
    return {"paused": _tagged(tag, lambda: dashboard().manager.pause(tag=tag, note=_note()))}


@blueprint.post("/tags/<path:tag>/resume")
@_write
def resume_tag(tag: str) -> Any:
    return {"resumed": _tagged(tag, lambda: dashboard().manager.resume(tag=tag))}


@blueprint.post("/tags/<path:tag>/remove")
@_write
def remove_tag(tag: str) -> Any:
    manager = dashboard().manager
    static, runtime = manager.tagged(tag)
    if not runtime:
        abort(404, f"no runtime entries tagged {tag!r}")
    return {"removed": manager.remove_by_tag(tag), "kept_static": static}


def _refuse_encoded(action: str) -> None:
    """A POST to an entry's own URL whose name ends in ``/<action>`` is no action."""
    if _encoded_in_name(action):
        abort(405, "POST an action to /api/entries/<name>/pause|resume|trigger")


def _tagged(tag: str, action: Callable[[], list[str]]) -> list[str]:
    static, runtime = dashboard().manager.tagged(tag)
    if not static and not runtime:
        abort(404, f"no entries tagged {tag!r}")
    return action()


def _note() -> str:
    note = _body().get("note", "")
    if not isinstance(note, str):
        raise ConfigError("must be a string", field="note")
    return note
