"""The dashboard (``celery schedule web``) through Flask's test client, against a real Redis:
its pages, its JSON API (the CLI's ``--json`` shapes), its form and its security."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta, timezone
from html import unescape
from typing import Any

import pytest
import redis
from app_helpers import two_task_app
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner
from flask.testing import FlaskClient

from celery_fork_scheduler import Manager
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.manager_results import HistoryItem
from celery_fork_scheduler.outages import Outage
from celery_fork_scheduler.web import WebConfig, create_app
from celery_fork_scheduler.web.views import duration_chart, timeline

pytest.importorskip("flask")

TOKEN = "s3cret-token-for-tests"
KEYS = Keys("scheduler:")
TIME_FIELDS = ("next_run", "next_run_local", "next_runs")


def make_app(redis_url: str) -> Celery:
    return two_task_app("web_test", redis_url, fork_scheduler_redis_url=redis_url)


@pytest.fixture
def app(redis_url: str) -> Celery:
    return make_app(redis_url)


def client_for(app: Celery, **config: Any) -> FlaskClient:
    return create_app(app, WebConfig(**config)).test_client()


@pytest.fixture
def client(app: Celery) -> FlaskClient:
    return client_for(app, token=TOKEN)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def log_in(client: FlaskClient) -> str:
    """Log the client in; return its session's CSRF token."""
    page = client.get("/login").get_data(as_text=True)
    answer = client.post("/login", data={"token": TOKEN, "csrf_token": csrf_of(page)})
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return csrf_of(client.get("/entries").get_data(as_text=True))


def cli_json(app: Celery, *args: str) -> Any:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    result = CliRunner().invoke(schedule, [*args, "--json"], obj=obj)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def without_times(data: Any) -> Any:
    if isinstance(data, list):
        return [without_times(item) for item in data]
    return {key: value for key, value in data.items() if key not in TIME_FIELDS}


def us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def happened(
    slot: datetime, outcome: str, replica: str, at: datetime | None = None, **more: Any
) -> dict[str, Any]:
    """A history item as stored: ``at`` defaults to the slot itself."""
    stored = {"slot": us(slot), "outcome": outcome, "replica": replica, "at": us(at or slot)}
    return {**stored, **more}


def push_history(client: redis.Redis, entry: str, *items: dict[str, Any]) -> None:
    """Items as the beat and the worker store them (oldest given first)."""
    for item in items:
        client.lpush(KEYS.history(entry), json.dumps(item))


# -- pages ------------------------------------------------------------------------------------


def test_the_entries_page_lists_every_entry_with_its_next_fire_in_its_zone(
    client: FlaskClient,
) -> None:
    page = client.get("/entries")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'data-entry="cleanup"' in html and 'data-entry="nightly"' in html
    assert "CET" in html or "CEST" in html  # nightly's next fire in Europe/Berlin
    assert "every 5 minutes" in html


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("tag=ops", "cleanup", "nightly"),
        ("q=NIGHT", "nightly", "cleanup"),
        ("state=paused", "nightly", "cleanup"),
        ("state=active", "cleanup", "nightly"),
    ],
    ids=["tag", "search-any-case", "paused", "active"],
)
def test_the_entries_page_filters_by_tag_state_and_name(
    app: Celery, client: FlaskClient, query: str, shown: str, hidden: str
) -> None:
    Manager(app).pause("nightly", note="migration")
    html = client.get(f"/entries?{query}").get_data(as_text=True)
    assert f'data-entry="{shown}"' in html
    assert f'data-entry="{hidden}"' not in html


def test_the_page_of_an_entry_shows_its_next_ten_fires_definition_and_version(
    client: FlaskClient,
) -> None:
    html = client.get("/entries/nightly").get_data(as_text=True)
    assert html.count("<li>") >= 10
    assert "02:00:00 CE" in html  # in the entry's zone
    assert '"task": "tasks.report"' in unescape(html)
    assert 'id="version">0' in html


def test_the_page_of_an_entry_shows_its_jitter_window_and_strikes_its_excluded_fires(
    app: Celery,
) -> None:
    """Issue 22: the dashboard shows the jitter window and marks the next fires that fall on
    an excluded date (the entry excludes the date of its own next fire)."""
    manager = Manager(app)
    manager.add("jittery", "tasks.report", "*/10 * * * *", jitter=30)
    # the date of the hourly entry's own next fire (after 23:00 UTC that is tomorrow's)
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    day = (hour + timedelta(hours=1)).date().isoformat()
    manager.add("closed-today", "tasks.report", "0 * * * *", exclude=[day], timezone="UTC")
    client = client_for(app, token=TOKEN)
    jittery = client.get("/entries/jittery").get_data(as_text=True)
    assert 'id="jitter-window"' in jittery
    assert "within 30 s after its slot" in jittery
    closed = client.get("/entries/closed-today").get_data(as_text=True)
    assert closed.count('class="excluded"') >= 1
    assert "excluded</span>" in closed
    plain = client.get("/entries/nightly").get_data(as_text=True)
    assert 'id="jitter-window"' not in plain
    assert 'class="excluded"' not in plain


def test_the_timeline_marks_each_slot_with_its_final_outcome(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    base = datetime(2025, 3, 1, tzinfo=timezone.utc)
    slots = [base + timedelta(minutes=5 * i) for i in range(4)]
    push_history(
        redis_client,
        "cleanup",
        happened(slots[0], "sent", "b1"),
        happened(slots[0], "completed", "w", duration=1.5),
        happened(slots[1], "sent", "b1"),
        happened(
            slots[1],
            "error",
            "w",
            duration=0.25,
            error="ValueError('boom') at redis://:hunter2@db:6379/0",
        ),
        happened(slots[2], "skipped:paused", "b1"),
        happened(slots[3], "sent", "b1"),
    )
    html = client.get("/entries/cleanup").get_data(as_text=True)
    kinds = re.findall(r'class="mark (\w+)"', html)
    assert kinds == ["completed", "failed", "skipped", "inflight"]
    assert "skipped: paused" in html
    assert "boom" in html and "hunter2" not in html
    assert '<svg class="chart" id="durations"' in html and html.count('class="bar ') == 2
    listed = client.get("/entries").get_data(as_text=True)
    row = listed[listed.index('data-entry="cleanup"') :]
    assert re.search(r'class="outcome inflight">in flight<', row[: row.index("</tr>")])


def test_the_durations_chart_scales_to_the_longest_run() -> None:
    items = [
        HistoryItem.from_stored(
            json.dumps({"slot": i * 1_000_000, "outcome": "completed", "at": 0, "duration": d})
        )
        for i, d in enumerate([1.0, 4.0, 2.0])
    ]
    chart = duration_chart(timeline(items[::-1], timezone.utc), width=300, height=104)
    assert [bar.height for bar in chart.bars] == [25.0, 100.0, 50.0]
    assert chart.top == "4.00s"


def test_the_replicas_page_counts_what_each_replica_published_and_skipped(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    now = datetime.now(timezone.utc)
    record = {
        "id": "beat-1",
        "hostname": "host-a",
        "pid": 42,
        "last_tick": now.isoformat(),
        "runtime_version": 0,
        "entries": 2,
    }
    redis_client.hset(KEYS.replicas, "beat-1", json.dumps(record))
    push_history(
        redis_client,
        "cleanup",
        happened(now, "sent", "beat-1"),
        happened(now, "skipped:busy", "beat-1"),
        happened(now, "sent", "beat-1", at=now - timedelta(hours=2)),
    )
    html = client.get("/replicas").get_data(as_text=True)
    row = html[html.index("beat-1") : html.index("</tr>", html.index("beat-1"))]
    assert "host-a" in row and "live" in row
    assert re.findall(r"<td>(\d+)", row)[-2:] == ["1", "1"]
    assert "busy 1" in row


def test_the_missed_page_shows_outages_and_skips(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    now = datetime.now(timezone.utc)
    outage = Outage(
        replica="beat-1",
        started=now - timedelta(minutes=3),
        ended=now,
        slots=7,
        entry_count=2,
        entries=("cleanup", "nightly"),
    )
    redis_client.lpush(KEYS.outages, outage.encode())
    push_history(
        redis_client,
        "nightly",
        happened(now, "skipped:paused", "beat-1"),
    )
    html = client.get("/missed").get_data(as_text=True)
    assert "7 slots of 2 entries" in html and "3m" in html
    assert 'id="skips"' in html and "paused" in html


def test_no_page_renders_the_redis_url_or_its_password(redis_url: str) -> None:
    app = make_app(redis_url)
    secret_url = redis_url.replace("redis://", "redis://:topsecret@")
    app.conf.fork_scheduler_redis_url = secret_url  # Redis has no password: pages fail or not
    client = client_for(app, token=TOKEN)
    for path in ("/entries", "/entries/cleanup", "/replicas", "/missed", "/api/entries"):
        body = client.get(path).get_data(as_text=True)
        assert "topsecret" not in body, path
        assert redis_url not in body, path


# -- the JSON API -------------------------------------------------------------------------------


def test_the_api_answers_with_the_shapes_of_the_cli_json(app: Celery, client: FlaskClient) -> None:
    Manager(app).pause("nightly", note="migration")
    assert without_times(client.get("/api/entries").get_json()) == without_times(
        cli_json(app, "list")
    )
    assert without_times(client.get("/api/entries/nightly").get_json()) == without_times(
        cli_json(app, "show", "nightly")
    )
    assert client.get("/api/replicas").get_json() == cli_json(app, "replicas")
    assert client.get("/api/outages").get_json() == cli_json(app, "history", "--outages")
    assert client.get("/api/entries?tag=ops").get_json()[0]["name"] == "cleanup"
    assert [j["name"] for j in client.get("/api/entries?paused=1").get_json()] == ["nightly"]


def test_an_api_write_with_the_token_pauses_resumes_and_triggers(
    app: Celery, client: FlaskClient
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    paused = client.post("/api/entries/nightly/pause", json={"note": "migration"}, headers=auth)
    assert paused.get_json() == {"paused": ["nightly"]}
    state = Manager(app).is_paused("nightly")
    assert state.paused and state.note == "migration"
    resumed = client.post("/api/entries/nightly/resume", headers=auth)
    assert resumed.get_json() == {"resumed": ["nightly"]}
    assert not Manager(app).is_paused("nightly").paused
    sent = client.post("/api/entries/cleanup/trigger", headers=auth).get_json()
    assert sent["name"] == "cleanup" and sent["task_id"] and not sent["skipped"]


def test_an_api_client_adds_and_removes_a_runtime_entry(app: Celery, client: FlaskClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    definition = {"name": "ping", "task": "tasks.cleanup", "schedule": "every 30s", "tags": ["t"]}
    added = client.post("/api/entries", json=definition, headers=auth)
    assert added.status_code == 201 and added.get_json()["source"] == "runtime"
    assert client.post("/api/tags/t/pause", headers=auth).get_json() == {"paused": ["ping"]}
    assert client.delete("/api/entries/ping", headers=auth).get_json() == {"removed": ["ping"]}
    assert [job.name for job in Manager(app).jobs()] == ["cleanup", "nightly"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong-token"}, 401), ({"Authorization": TOKEN}, 401)],
    ids=["no-header", "wrong-token", "no-bearer-scheme"],
)
def test_an_api_write_without_the_token_is_refused(
    app: Celery, client: FlaskClient, headers: dict[str, str], status: int
) -> None:
    answer = client.post("/api/entries/nightly/pause", headers=headers)
    assert answer.status_code == status
    assert "Bearer" in answer.get_json()["error"]
    assert not Manager(app).is_paused("nightly").paused


def test_a_session_cookie_does_not_authorise_the_api(app: Celery, client: FlaskClient) -> None:
    log_in(client)
    assert client.post("/api/entries/nightly/pause").status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("get", "/api/entries/nope", None, 404, None),
        ("get", "/api/entries/nightly?n=abc", None, 400, "n"),
        ("get", "/api/replicas?within=-1", None, 400, "within"),
        (
            "post",
            "/api/entries",
            {"name": "x", "task": "tasks.cleanup", "schedule": "every 7 parsecs"},
            400,
            "schedule",
        ),
        ("post", "/api/entries", {"name": "x", "task": "", "schedule": "every 5m"}, 400, "task"),
        (
            "post",
            "/api/entries",
            {"name": "x", "task": "t", "schedule": "@daily", "bogus": 1},
            400,
            "bogus",
        ),
        ("post", "/api/entries", [1, 2], 400, None),
        ("post", "/api/entries/nightly/trigger", {"force": "yes"}, 400, "force"),
        ("delete", "/api/entries/nightly", None, 400, None),
    ],
    ids=[
        "unknown",
        "bad-count",
        "bad-within",
        "bad-schedule",
        "empty-task",
        "unknown-key",
        "not-an-object",
        "bad-force",
        "static-entry",
    ],
)
def test_bad_api_input_gets_the_validators_message_not_a_500(
    client: FlaskClient, method: str, path: str, body: Any, status: int, field: str | None
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = getattr(client, method)(path, json=body, headers=auth)
    assert answer.status_code == status, answer.get_data(as_text=True)
    error = answer.get_json()
    assert error["error"] and "Traceback" not in error["error"]
    assert error.get("field") == field


# -- forms, sessions, CSRF ------------------------------------------------------------------------


def test_a_logged_in_form_pauses_an_entry_with_a_note(app: Celery, client: FlaskClient) -> None:
    csrf = log_in(client)
    answer = client.post(
        "/entries/nightly/pause", data={"csrf_token": csrf, "note": "DB migration"}
    )
    assert answer.status_code == 302
    state = Manager(app).is_paused("nightly")
    assert state.paused and state.note == "DB migration"
    html = client.get("/entries/nightly").get_data(as_text=True)
    assert "DB migration" in html and 'id="resume"' in html


def test_a_form_without_the_csrf_token_is_refused(app: Celery, client: FlaskClient) -> None:
    log_in(client)
    answer = client.post("/entries/nightly/pause", data={"note": "x"})
    assert answer.status_code == 403
    assert not Manager(app).is_paused("nightly").paused


def test_a_form_from_a_browser_that_did_not_log_in_is_sent_to_the_login(
    app: Celery, client: FlaskClient
) -> None:
    csrf = csrf_of(client.get("/login").get_data(as_text=True))
    answer = client.post("/entries/nightly/pause", data={"csrf_token": csrf})
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]
    assert not Manager(app).is_paused("nightly").paused


def test_a_wrong_token_does_not_log_in(client: FlaskClient) -> None:
    csrf = csrf_of(client.get("/login").get_data(as_text=True))
    answer = client.post("/login", data={"token": "guess", "csrf_token": csrf})
    assert answer.status_code == 401
    assert 'id="entry-actions"' not in client.get("/entries/nightly").get_data(as_text=True)


def test_the_tag_actions_pause_and_resume_every_tagged_entry(
    app: Celery, client: FlaskClient
) -> None:
    csrf = log_in(client)
    client.post("/tags/reports/pause", data={"csrf_token": csrf, "note": "freeze"})
    assert Manager(app).is_paused("nightly").note == "freeze"
    client.post("/tags/reports/resume", data={"csrf_token": csrf})
    assert not Manager(app).is_paused("nightly").paused


def test_the_form_adds_a_runtime_entry_validated_like_schedule_validate(
    app: Celery, client: FlaskClient
) -> None:
    csrf = log_in(client)
    fields = {
        "csrf_token": csrf,
        "name": "ping",
        "task": "tasks.cleanup",
        "schedule": "every 7 parsecs",
        "args": "[1",
        "tags": "a, b",
    }
    answer = client.post("/new", data=fields)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert re.search(r'id="error-args">not valid JSON', html)
    fields["args"] = "[1]"
    html = client.post("/new", data=fields).get_data(as_text=True)
    assert 'id="error-schedule">cannot parse schedule' in html
    fields["schedule"] = "every 30 seconds"
    answer = client.post("/new", data=fields)
    assert answer.status_code == 302
    job = Manager(app).get("ping")
    assert job.args == (1,) and job.tags == {"a", "b"}


def test_the_form_edits_only_what_changed_and_refuses_a_stale_version(
    app: Celery, client: FlaskClient
) -> None:
    manager = Manager(app)
    manager.add("ping", "tasks.cleanup", "every 30s", max_runs=5, options={"priority": 3})
    csrf = log_in(client)
    html = client.get("/edit/ping").get_data(as_text=True)
    version = re.search(r'name="version" value="(\d+)"', html)
    assert version
    fields = {
        "csrf_token": csrf,
        "version": version.group(1),
        "name": "ping",
        "task": "tasks.cleanup",
        "schedule": "every 30 seconds",
        "timezone": "UTC",
        "args": "[]",
        "kwargs": "{}",
        "tags": "",
        "queue": "slow",
        "description": "now",
    }
    assert client.post("/edit/ping", data=fields).status_code == 302
    job = manager.get("ping")
    assert job.max_runs == 5 and job.options == {"priority": 3, "queue": "slow"}
    assert job.description == "now"
    fields["description"] = "stale"
    html = client.post("/edit/ping", data=fields).get_data(as_text=True)
    assert "changed since this form was opened" in html
    assert manager.get("ping").description == "now"


def test_a_read_only_dashboard_hides_and_refuses_every_write(app: Celery) -> None:
    client = client_for(app, token=TOKEN, read_only=True)
    html = client.get("/entries/nightly").get_data(as_text=True)
    assert "read-only" in html and '<form method="post"' not in html
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = client.post("/api/entries/nightly/pause", headers=auth)
    assert answer.status_code == 403 and "read-only" in answer.get_json()["error"]
    assert client.post("/entries/nightly/pause").status_code == 403
    assert not Manager(app).is_paused("nightly").paused


def test_without_a_token_the_dashboard_is_read_only(app: Celery) -> None:
    client = client_for(app)
    answer = client.post("/api/entries/nightly/pause", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 403 and "no token" in answer.get_json()["error"]


def test_a_loopback_dashboard_refuses_a_foreign_host_header(client: FlaskClient) -> None:
    assert client.get("/entries", headers={"Host": "evil.example:8555"}).status_code == 400
    assert client.get("/entries", headers={"Host": "127.0.0.1:8555"}).status_code == 200


def test_every_answer_forbids_scripts_and_framing(client: FlaskClient) -> None:
    answer = client.get("/entries")
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "<script" not in answer.get_data(as_text=True)


def test_stored_text_is_escaped(app: Celery, client: FlaskClient) -> None:
    Manager(app).pause("nightly", note='<script>alert("x")</script>\u202e')
    html = client.get("/entries/nightly").get_data(as_text=True)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "\u202e" not in html


def test_a_missing_page_and_redis_down_are_pages_not_tracebacks(redis_url: str) -> None:
    app = make_app(redis_url)
    app.conf.fork_scheduler_redis_url = "redis://127.0.0.1:1/0"
    client = client_for(app, token=TOKEN)
    assert client.get("/entries/none-such").status_code == 503
    answer = client.get("/api/entries")
    assert answer.status_code == 503 and "cannot reach Redis" in answer.get_json()["error"]
    assert client.get("/no/such/page").status_code == 404


def test_schedule_web_without_the_extra_says_what_to_install(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in [m for m in sys.modules if m.startswith("celery_fork_scheduler.web")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "flask", None)
    obj = CLIContext(app=app, no_color=True, workdir=None)
    result = CliRunner().invoke(schedule, ["web"], obj=obj)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: the dashboard needs its extra: pip install 'celery-fork-scheduler[web]' "
        "(missing: flask)"
    ]


def test_schedule_web_refuses_a_short_token(app: Celery) -> None:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    result = CliRunner().invoke(schedule, ["web", "--token", "short"], obj=obj)
    assert result.exit_code == 2 and "at least 8 characters" in result.stderr


def test_every_form_the_pages_render_carries_the_csrf_token(client: FlaskClient) -> None:
    csrf = log_in(client)
    for path in ("/entries", "/entries?tag=reports", "/entries/nightly", "/new"):
        html = client.get(path).get_data(as_text=True)
        forms = html.count('<form method="post"')
        assert forms and html.count(f'name="csrf_token" value="{csrf}"') == forms, path
