"""Adversary round 5: the dashboard, its JSON API, runtime edits racing, history and stats.

Every test quotes the documented promise it checks and fails on the code it was written
against (see the round-5 report)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import pytest
from app_helpers import two_task_app
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner
from flask.testing import FlaskClient

from celery_fork_scheduler import Manager
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.web import WebConfig, create_app

pytest.importorskip("flask")

TOKEN = "adversary-round5-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def web_app(redis_url: str, **conf: Any) -> Celery:
    return two_task_app("adv5_web", redis_url, fork_scheduler_redis_url=redis_url, **conf)


def client_for(app: Celery, **config: Any) -> FlaskClient:
    return create_app(app, WebConfig(**config)).test_client()


def cli_json(app: Celery, *args: str) -> Any:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    result = CliRunner().invoke(schedule, [*args, "--json"], obj=obj)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- web: bad input ---------------------------------------------------------------------------


def test_a_deeply_nested_json_body_gets_a_400_not_a_500(redis_url: str) -> None:
    """docs/web.md: "Errors are `{"error": "...", "field": "..."}` with 400 (bad input: the
    validator's message and the field it names) ... never a traceback", and docs/security.md
    (dashboard): "**Bad input** gets the validator's message (beside the field in the form,
    `field` in the API), never a 500 page"."""
    client = client_for(web_app(redis_url), token=TOKEN)
    body = "[" * 100_000 + "]" * 100_000  # 200 kB: under the 1 MiB body limit
    answer = client.post(
        "/api/entries/nightly/pause",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert answer.status_code == 400, (answer.status_code, answer.get_json())


# -- web: names in the URL --------------------------------------------------------------------


def test_the_api_shows_an_entry_whose_name_ends_in_history(redis_url: str) -> None:
    """docs/web.md: "`GET /api/entries/<name>[?n=10]` | `schedule show NAME --json`"; names
    may hold `/` (docs/security.md: "entry name | 200 characters; no `{` or `}`, no control
    characters ... not `cap`")."""
    app = web_app(redis_url)
    Manager(app).add("reports/history", "tasks.report", "every 10 minutes")
    client = client_for(app, token=TOKEN)
    cli = cli_json(app, "show", "reports/history")
    answer = client.get("/api/entries/" + quote("reports/history", safe=""))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["name"] == cli["name"] == "reports/history"


# -- web: the JSON API has the CLI's --json shapes --------------------------------------------


def test_api_entries_equal_the_cli_json_for_a_static_entry_with_datetime_args(
    redis_url: str,
) -> None:
    """docs/web.md: "Everything under `/api/` answers JSON in the shapes of the CLI's
    `--json`: ... `GET /api/entries[?tag=T&paused=1]` | `schedule list --json`". A static
    entry may carry a `datetime` argument (only `buffer_one` needs JSON values: docs/manager.md
    "An entry with `overlap="buffer_one"` holds one run back in Redis as JSON, so its `args`
    ... must be JSON values (no `datetime`, no objects)")."""
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    app = web_app(
        redis_url,
        extra_entries={
            "dated": {"task": "tasks.report", "schedule": "every 1 hour", "args": [since]}
        },
    )
    client = client_for(app, token=TOKEN)
    api = {job["name"]: job for job in client.get("/api/entries").get_json()}
    cli = {job["name"]: job for job in cli_json(app, "list")}
    assert api["dated"]["args"] == cli["dated"]["args"]


# -- web: what is rendered --------------------------------------------------------------------


def test_a_password_in_a_pause_note_is_masked_on_the_page_of_the_entry(redis_url: str) -> None:
    """docs/web.md (Security): "**No secret is rendered**: no page or answer shows the Redis
    URL; passwords in URLs inside stored text (a task's error, a note) are masked as in the
    CLI"."""
    app = web_app(redis_url)
    Manager(app).pause("nightly", note="moved to redis://ops:hunter2-pw@db.internal:6379/0")
    client = client_for(app, token=TOKEN)
    for path in ("/entries/nightly", "/entries"):
        html = client.get(path).get_data(as_text=True)
        assert "hunter2-pw" not in html, path


def test_a_bidirectional_override_in_a_pause_note_is_escaped_on_the_entries_page(
    redis_url: str,
) -> None:
    """docs/web.md (Security): "control and bidirectional characters in names and notes are
    shown as escapes"."""
    app = web_app(redis_url)
    Manager(app).pause("nightly", note="ok \u202etxt.exe")
    html = client_for(app, token=TOKEN).get("/entries").get_data(as_text=True)
    assert "\u202e" not in html


def test_a_read_only_dashboard_shows_no_entry_form(redis_url: str) -> None:
    """docs/web.md (Security): "**`--read-only`** hides every button and form and refuses
    every write (403), token or not"."""
    client = client_for(web_app(redis_url), token=TOKEN, read_only=True)
    html = client.get("/new").get_data(as_text=True)
    assert 'method="post"' not in html


def test_triggering_an_entry_the_validator_accepted_gets_no_500(redis_url: str) -> None:
    """docs/web.md (Security): "**Bad input** gets the validator's message ..., never a 500
    page"; docs/web.md (JSON API): errors are 400, 401, 403, 404, 409 or 503 "— never a
    traceback". The entry below is accepted by `POST /api/entries` (201)."""
    app = web_app(redis_url)
    client = client_for(app, token=TOKEN)
    added = client.post(
        "/api/entries",
        json={
            "name": "far-expiry",
            "task": "tasks.report",
            "schedule": "every 10 seconds",
            "options": {"expires": 1e308},
        },
        headers=AUTH,
    )
    if added.status_code == 400:  # refused at the door, naming the field: that is fine too
        assert added.get_json()["field"] == "options"
        return
    assert added.status_code == 201, added.get_json()
    answer = client.post("/api/entries/far-expiry/trigger", headers=AUTH)
    assert answer.status_code < 500, (answer.status_code, answer.get_json())


def test_an_entry_that_can_never_be_published_is_refused_by_add(redis_url: str) -> None:
    """docs/security.md: "Every entry is checked at the call (`Manager.add`/`update`, `celery
    schedule add`) ...; a value over a limit is a `ConfigError` naming the entry and the
    field, and nothing is stored", and (Bad input) "No known input crashes a parser or the
    scheduler". An `expires` of 1e308 s is accepted, and every publish of the entry then
    raises `OverflowError` in Celery (`trigger` raises it: not one of docs/manager.md's
    errors)."""
    from celery_fork_scheduler.errors import ConfigError

    manager = Manager(web_app(redis_url))
    try:
        manager.add("far-expiry", "tasks.report", "every 10 seconds", options={"expires": 1e308})
    except ConfigError as exc:
        assert exc.field == "options"
        return
    manager.trigger("far-expiry")  # raises OverflowError


# -- runtime edits racing ---------------------------------------------------------------------


def test_an_update_without_expected_version_is_not_refused_as_stale(redis_url: str) -> None:
    """docs/manager.md: "`manager.update("cleanup", schedule="every 30 minutes", args=[60])
    # only these fields change`", and (Errors) "`StaleVersionError` ... | `expected_version`
    is no longer the entry's version". Manager A updates `args` (passing no
    `expected_version`) while Manager B changes `description` of the same entry."""
    app = web_app(redis_url)
    first, second = Manager(app), Manager(app)
    first.add("shared", "tasks.report", "every 10 minutes", args=["a"])
    read = first._stored

    raced: list[str] = []

    def read_then_race(name: str) -> Any:
        stored = read(name)
        if not raced:  # B writes once, between A's first read and A's write
            raced.append(name)
            second.update(name, description="changed by B")
        return stored

    first._stored = read_then_race  # type: ignore[method-assign]
    first.update("shared", args=["b"])  # StaleVersionError, though no version was given
    job = second.get("shared")
    assert (list(job.args), job.description) == (["b"], "changed by B")
