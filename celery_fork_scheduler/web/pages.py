"""The pages: entries, an entry, replicas, missed and skipped, the entry form, the actions.

Reading needs nothing. Every ``POST`` (an action, the entry form) needs a session that gave the
token (``/login``) and the session's CSRF token in the form; a read-only dashboard refuses them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from ..cli.edit import trigger_data
from ..cli.inspection import entry_details, replicas_report
from ..cli.output import local, plural, relative, zone_of
from ..manager import Manager
from . import forms, security, views
from .context import dashboard

__all__ = ["blueprint"]

blueprint = Blueprint("pages", __name__)

#: What the entry and tag action buttons do.
ACTIONS = ("pause", "resume", "trigger", "remove")
#: How many history items the page of an entry reads (the most a history keeps is
#: ``fork_scheduler_history_size``; a slot has one to three items).
HISTORY_READ = 200


@blueprint.context_processor
def _shared() -> dict[str, Any]:
    config = dashboard().config
    return {
        "writable": config.writable,
        "why_read_only": config.why_read_only,
        "logged_in": security.logged_in(config),
        "csrf_field": security.CSRF_FIELD,
    }


#: Pages that are forms for writing: a read-only dashboard does not show them.
FORM_PAGES = frozenset({"pages.new", "pages.edit"})


@blueprint.before_request
def _guard_writes() -> Response | None:
    config = dashboard().config
    if request.endpoint in FORM_PAGES and not config.writable:
        abort(403, config.why_read_only)
    if request.method != "POST":
        return None
    if request.endpoint == "pages.logout":
        security.check_csrf()
        return None
    if not config.writable:
        abort(403, config.why_read_only)
    security.check_csrf()
    if request.endpoint != "pages.login" and not security.logged_in(config):
        flash("give the token to change the schedule", "error")
        return redirect(url_for("pages.login", next=_back()))
    return None


def _back(default: str | None = None) -> str:
    """Where to go after a form: its ``next`` field when it is a path of this site."""
    # Browsers drop tabs and line breaks from URLs: "/\t/evil.example" is "//evil.example".
    target = "".join(ch for ch in request.values.get("next", "") if ch not in "\t\n\r")
    split = urlsplit(target)
    if target.startswith("/") and not target.startswith(("//", "/\\")) and not split.netloc:
        return target
    return default or url_for("pages.entries")


@blueprint.get("/")
def index() -> Response:
    return redirect(url_for("pages.entries"))


@blueprint.get("/entries")
def entries() -> str:
    board = dashboard()
    manager = board.manager
    everything = manager.jobs()
    tag = request.args.get("tag", "")
    state = request.args.get("state", "")
    search = request.args.get("q", "")
    shown = views.filter_jobs(everything, tag=tag, state=state, search=search)
    return render_template(
        "entries.html",
        rows=views.rows(shown, board.now(), views.histories(manager, [j.name for j in shown], 3)),
        total=len(everything),
        tags=views.all_tags(everything),
        states=views.STATES,
        tag=tag,
        state=state,
        search=search,
        unreadable=sorted(manager.unreadable().items()),
    )


@blueprint.get("/entries/<path:name>")
def entry(name: str) -> str:
    board = dashboard()
    details = entry_details(board.manager, name, board.now(), 10, history=1)
    job = details.job
    zone = zone_of(job.schedule)
    marks = views.timeline(board.manager.history_items(name, HISTORY_READ), zone)
    return render_template(
        "entry.html",
        job=job,
        row=views.rows([job], board.now())[0],
        zone=zone.key,
        next_runs=[
            (local(slot, zone), relative(slot, board.now()), slot in details.excluded)
            for slot in details.slots
        ],
        jitter=job.jitter.total_seconds() if job.jitter else 0.0,
        counters=details.counters,
        marks=marks,
        chart=views.duration_chart(marks),
        definition=views.definition_text(details.to_dict()),
    )


@blueprint.get("/replicas")
def replicas() -> str:
    board = dashboard()
    report = replicas_report(board.manager, 3_600)
    recent = views.recent_items(views.histories(board.manager), board.now())
    return render_template(
        "replicas.html",
        report=report,
        activity=views.activity(recent),
        window=views.RECENT,
    )


@blueprint.get("/missed")
def missed() -> str:
    board = dashboard()
    outages = board.manager.outages(20)
    recent = views.recent_items(views.histories(board.manager), board.now())
    return render_template(
        "missed.html",
        outages=[views.outage_row(outage, board.now()) for outage in outages],
        skips=views.skips(recent, board.now()),
    )


@blueprint.route("/new", methods=["GET", "POST"])
def new() -> Any:
    form = forms.EntryForm()
    if request.method == "POST":
        form = forms.EntryForm.read(request.form)
        job = forms.add_entry(dashboard().manager, form)
        if job is not None:
            _flash_warnings(form)
            flash(f"added {job.name!r}", "ok")
            return redirect(url_for("pages.entry", name=job.name))
    return _form_page(form, editing=None, version=None), 400 if form.errors else 200


@blueprint.route("/edit/<path:name>", methods=["GET", "POST"])
def edit(name: str) -> Any:
    manager = dashboard().manager
    job = manager.get(name)
    if job.source != "runtime":
        abort(400, f"{name!r} is a static entry (config or @periodic): change it in the code")
    form = forms.EntryForm.of_job(job)
    version: int | None = job.version
    if request.method == "POST":
        form = forms.EntryForm.read(request.form)
        version = _version(request.form.get("version", ""))
        changed = forms.edit_entry(manager, name, form, version)
        if changed is not None:
            _flash_warnings(form)
            flash(f"saved {name!r}", "ok")
            return redirect(url_for("pages.entry", name=name))
    return _form_page(form, editing=name, version=version), 400 if form.errors else 200


def _version(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _form_page(form: forms.EntryForm, *, editing: str | None, version: int | None) -> str:
    return render_template(
        "entry_form.html",
        form=form,
        fields=forms.FIELDS,
        general=forms.GENERAL,
        editing=editing,
        version=version,
    )


def _flash_warnings(form: forms.EntryForm) -> None:
    for warning in form.warnings:
        flash(warning, "warning")


@blueprint.post("/entries/<path:name>/<any(pause, resume, trigger, remove):action>")
def entry_action(name: str, action: str) -> Response:
    manager = dashboard().manager
    back = _back(url_for("pages.entry", name=name))
    if action == "pause":
        manager.pause(name, note=request.form.get("note", ""))
        flash(f"paused {name!r}", "ok")
    elif action == "resume":
        manager.resume(name)
        flash(f"resumed {name!r}", "ok")
    elif action == "trigger":
        _flash_trigger(manager, name, force=request.form.get("force") == "on")
    else:
        _confirmed()
        manager.remove(name)
        flash(f"removed {name!r}", "ok")
        back = _back(url_for("pages.entries"))
        if back.startswith(url_for("pages.entry", name=name)):
            back = url_for("pages.entries")
    return redirect(back)


def _flash_trigger(manager: Manager, name: str, *, force: bool) -> None:
    data = trigger_data(name, manager.trigger(name, force=force))
    if data["skipped"]:
        flash(f"{name!r} not run: {data['reason']}", "warning")
    else:
        flash(f"sent {name!r}: task id {data['task_id']}", "ok")
    if data["warning"]:
        flash(f"sent, but {data['warning']}", "warning")


@blueprint.post("/tags/<path:tag>/<any(pause, resume, trigger, remove):action>")
def tag_action(tag: str, action: str) -> Response:
    manager = dashboard().manager
    static, runtime = manager.tagged(tag)
    if not static and not runtime:
        abort(404, f"no entries tagged {tag!r}")

    def done(names: list[str]) -> str:
        return f"{plural(len(names), 'entry')} tagged {tag!r}"

    if action == "pause":
        flash(f"paused {done(manager.pause(tag=tag, note=request.form.get('note', '')))}", "ok")
    elif action == "resume":
        flash(f"resumed {done(manager.resume(tag=tag))}", "ok")
    elif action == "trigger":
        for name in sorted(static + runtime):
            _flash_trigger(manager, name, force=False)
    else:
        _confirmed()
        if not runtime:
            abort(400, f"no runtime entries tagged {tag!r} (static entries cannot be removed)")
        flash(f"removed {done(manager.remove_by_tag(tag))}", "ok")
        if static:
            flash(f"static entries stay (pause them instead): {', '.join(static)}", "warning")
    return redirect(_back())


def _confirmed() -> None:
    if request.form.get("confirm") != "yes":
        abort(400, "tick the box to confirm the removal")


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Any:
    config = dashboard().config
    if request.method == "POST":
        if security.log_in(config, request.form.get("token", "")):
            flash("you can change the schedule now", "ok")
            return redirect(_back())
        flash("wrong token", "error")
        return render_template("login.html", next=_back()), 401
    return render_template("login.html", next=_back())


@blueprint.post("/logout")
def logout() -> Response:
    security.log_out()
    return redirect(url_for("pages.entries"))
