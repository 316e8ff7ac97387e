"""The Django admin page (celery_fork_scheduler.contrib.django) in a real Django admin site, with
Django's test client, against the test redis-server: no pytest-django.

A minimal Django project is configured here once (admin, auth, contenttypes, sessions,
messages and the page's app; sqlite in memory for the users and sessions); each test points
``FORK_SCHEDULER_ADMIN_APP`` at its own Celery app on the emptied test Redis.
"""

from __future__ import annotations

import html
import json
import re
import sys
import types
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import django
import pytest
import redis
from celery import Celery
from django.conf import settings

from celery_fork_scheduler import install
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.manager import Manager

URLS = "fork_scheduler_admin_test_urls"

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "celery_fork_scheduler.contrib.django",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        ROOT_URLCONF=URLS,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        STATIC_URL="/static/",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    django.setup()

from django.contrib import admin  # noqa: E402  (after the settings)
from django.contrib.auth.models import Permission, User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import (  # noqa: E402
    override_settings,
    setup_test_environment,
    teardown_test_environment,
)
from django.urls import path  # noqa: E402

urls = types.ModuleType(URLS)
urls.urlpatterns = [path("admin/", admin.site.urls)]  # type: ignore[attr-defined]
sys.modules[URLS] = urls

KEYS = Keys("scheduler:")
LIST = "/admin/fork_scheduler/scheduleentry/"
ACTION = LIST + "action/"
PASSWORD = "pw-of-the-test"


def entry_url(name: str) -> str:
    from django.contrib.admin.utils import quote

    return f"{LIST}{quote(name)}/change/"


@pytest.fixture(scope="module", autouse=True)
def django_project() -> Iterator[None]:
    setup_test_environment()
    call_command("migrate", run_syncdb=True, verbosity=0)
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    User.objects.create_user("visitor", "visitor@example.com", PASSWORD)  # not staff
    viewer = User.objects.create_user("viewer", "viewer@example.com", PASSWORD, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_scheduleentry"))
    operator = User.objects.create_user("operator", "op@example.com", PASSWORD, is_staff=True)
    operator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_scheduleentry", "change_scheduleentry"])
    )
    yield
    teardown_test_environment()


def report(*args: Any, **kwargs: Any) -> None:
    """The task the entries name."""


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("proj", broker=redis_url, set_as_current=False)
    app.conf.update(
        timezone="UTC",
        beat_schedule={
            "nightly-report": {
                "task": "tasks.report",
                "schedule": "0 3 * * *",
                "timezone": "Europe/Berlin",
                "tags": ["reports"],
            }
        },
    )
    app.task(name="tasks.report", shared=False)(report)
    install(app)
    with override_settings(FORK_SCHEDULER_ADMIN_APP=app):
        yield app
    app.close()


@pytest.fixture
def manager(app: Celery) -> Manager:
    manager: Manager = app.fork_scheduler
    manager.add("sync-rates", "tasks.report", "every 15 minutes", tags=["io", "reports"])
    manager.add("cleanup", "tasks.report", "every 1 hour", tags=["io"])
    return manager


def logged_in(user: str, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    assert client.login(username=user, password=PASSWORD)
    return client


def text(response: Any) -> str:
    """The page as a person reads it (HTML entities decoded)."""
    return html.unescape(response.content.decode())


def shown_messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def post(client: Client, **data: Any) -> Any:
    return client.post(ACTION, data, follow=True)


def us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


# -- the entries page -------------------------------------------------------------------------


def test_the_admin_index_links_the_page(manager: Manager) -> None:
    response = logged_in("root").get("/admin/")
    assert response.status_code == 200
    assert LIST in text(response) and "Schedule entries" in text(response)


def test_the_list_shows_each_entry_with_its_next_fire_and_last_outcome(
    manager: Manager, redis_client: redis.Redis
) -> None:
    sent = datetime.now(timezone.utc) - timedelta(minutes=3)
    redis_client.hset(
        KEYS.state("nightly-report"),
        mapping={"state": "failed", "sent_at": us(sent), "runs": 4},
    )
    response = logged_in("root").get(LIST)
    assert response.status_code == 200
    page = text(response)
    rows = {row.name: row for row, _ in response.context["rows"]}
    assert set(rows) == {"nightly-report", "sync-rates", "cleanup"}
    nightly = rows["nightly-report"]
    # the next fire in the entry's own zone, absolute and relative
    expected = manager.get("nightly-report").next_run
    assert expected is not None
    berlin = expected.astimezone(nightly.job.schedule.zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    assert nightly.next_local == berlin and nightly.next_relative.startswith("in ")
    day, clock = berlin.split(" ", 1)
    assert f'{day} <span class="fs-when">{clock}</span>' in page
    assert "Europe/Berlin" in page
    assert nightly.job.last_outcome == "failed" and '<span class="fs-bad">failed</span>' in page
    assert "3m" in nightly.last_relative and nightly.last_relative.endswith("ago")
    assert "every 15 minutes" in page and "runtime" in page and "config" in page


def test_search_tag_and_state_filters(manager: Manager) -> None:
    manager.pause("cleanup", note="migration")
    client = logged_in("root")

    def names(query: str) -> set[str]:
        return {row.name for row, _ in client.get(LIST + query).context["rows"]}

    assert names("?q=SYNC") == {"sync-rates"}
    assert names("?tag=reports") == {"nightly-report", "sync-rates"}
    assert names("?state=paused") == {"cleanup"}
    assert names("?tag=io&state=active") == {"sync-rates"}
    assert names("?tag=nope") == set()
    page = text(client.get(LIST))
    assert "migration" in page  # the pause note


# -- actions ----------------------------------------------------------------------------------


def test_pause_with_a_note_and_resume_show_in_redis(
    manager: Manager, redis_client: redis.Redis
) -> None:
    client = logged_in("root")
    response = post(
        client, scope="names", names=["nightly-report", "cleanup"], action="pause", note="db move"
    )
    assert response.status_code == 200
    assert any("paused 2 entries" in m and "db move" in m for m in shown_messages(response))
    for name in ("nightly-report", "cleanup"):
        state = redis_client.hgetall(KEYS.state(name))
        assert (state[b"paused"], state[b"pause_note"]) == (b"1", b"db move")
    assert not redis_client.hget(KEYS.state("sync-rates"), "paused")
    post(client, scope="names", names=["nightly-report"], action="resume")
    assert not redis_client.hget(KEYS.state("nightly-report"), "paused")
    assert redis_client.hget(KEYS.state("cleanup"), "paused") == b"1"


def test_actions_by_tag(manager: Manager, redis_client: redis.Redis) -> None:
    client = logged_in("root")
    post(client, scope="tag", tag="io", action="pause", note="")
    assert manager.is_paused("sync-rates").paused and manager.is_paused("cleanup").paused
    assert not manager.is_paused("nightly-report").paused
    post(client, scope="tag", tag="io", action="resume")
    assert not manager.is_paused("cleanup").paused
    response = post(client, scope="tag", tag="reports", action="remove")
    said = shown_messages(response)
    assert any("removed 1 entry: 'sync-rates'" in m for m in said)
    assert any("static entries with the tag 'reports' stay" in m for m in said)
    assert not redis_client.hexists(KEYS.runtime_entries, "sync-rates")
    assert redis_client.hexists(KEYS.runtime_entries, "cleanup")


def test_trigger_sends_a_run_and_records_it(manager: Manager, redis_client: redis.Redis) -> None:
    response = post(logged_in("root"), scope="names", names=["cleanup"], action="trigger")
    assert any(m.startswith("triggered 'cleanup'") for m in shown_messages(response))
    assert redis_client.hget(KEYS.state("cleanup"), "manual_runs") == b"1"
    messages = [json.loads(raw) for raw in redis_client.lrange("celery", 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["tasks.report"]
    manager.pause("cleanup")
    response = post(logged_in("root"), scope="tag", tag="io", action="trigger")
    said = shown_messages(response)
    assert any("'cleanup' was not triggered: the entry is paused" in m for m in said)
    assert any(m.startswith("triggered 'sync-rates'") for m in said)


def test_remove_a_runtime_entry_but_not_a_static_one(
    manager: Manager, redis_client: redis.Redis
) -> None:
    client = logged_in("root")
    response = client.post(
        ACTION,
        {"scope": "names", "names": ["cleanup"], "action": "remove", "next": entry_url("cleanup")},
    )
    assert response.status_code == 302 and response["Location"] == LIST  # its page is gone
    assert not redis_client.hexists(KEYS.runtime_entries, "cleanup")
    response = post(client, scope="names", names=["nightly-report"], action="remove")
    assert any(
        "static entries (config or decorator) cannot be removed" in m
        for m in shown_messages(response)
    )
    assert manager.get("nightly-report").name == "nightly-report"


def test_actions_are_recorded_in_the_admin_log(manager: Manager) -> None:
    from django.contrib.admin.models import LogEntry

    before = LogEntry.objects.count()
    post(logged_in("root"), scope="names", names=["cleanup"], action="pause", note="n")
    entry = LogEntry.objects.order_by("-pk").first()
    assert LogEntry.objects.count() == before + 1
    assert entry is not None and entry.object_id == "cleanup"
    assert entry.get_admin_url() == entry_url("cleanup")


# -- one entry --------------------------------------------------------------------------------


def test_an_entry_page_shows_next_fires_history_and_definition(
    manager: Manager, redis_client: redis.Redis
) -> None:
    slot = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    item = {
        "slot": us(slot),
        "outcome": "failed",
        "task_id": "t-1",
        "replica": "r1",
        "at": us(slot) + 2_500_000,
        "duration": 2.5,
        "error": "ConnectionError: redis://:s3cret@db.internal:6379/0 refused",
    }
    redis_client.lpush(KEYS.history("sync-rates"), json.dumps(item), b"not json")
    response = logged_in("root").get(entry_url("sync-rates"))
    assert response.status_code == 200
    page = text(response)
    detail = response.context["detail"]
    assert len(detail.next_fires) == 10
    assert detail.next_fires[0] in page
    assert [h.outcome for h in detail.history] == ["unreadable", "failed"]
    assert "2.500 s" in page and "r1" in page
    assert "s3cret" not in page and "redis://:**@db.internal" in page
    assert "every 15 minutes" in page and "io, reports" in page


def test_an_entry_name_with_a_slash_has_its_page(manager: Manager) -> None:
    manager.add("team/a b:c_d", "tasks.report", "every 1 hour")
    response = logged_in("root").get(entry_url("team/a b:c_d"))
    assert response.status_code == 200
    assert response.context["row"].name == "team/a b:c_d"


def test_an_unknown_entry_goes_back_to_the_list_with_a_message(manager: Manager) -> None:
    response = logged_in("root").get(entry_url("nope"), follow=True)
    assert response.status_code == 200
    assert shown_messages(response) == ["no entry named 'nope'"]


# -- permissions and CSRF ---------------------------------------------------------------------


def test_a_user_who_is_not_staff_is_refused(manager: Manager, redis_client: redis.Redis) -> None:
    client = logged_in("visitor")
    response = client.get(LIST)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    response = client.post(ACTION, {"scope": "names", "names": ["cleanup"], "action": "pause"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not redis_client.hget(KEYS.state("cleanup"), "paused")
    anonymous = Client().get(LIST)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


def test_staff_need_the_permissions(manager: Manager, redis_client: redis.Redis) -> None:
    viewer = logged_in("viewer")
    response = viewer.get(LIST)
    assert response.status_code == 200
    assert 'name="names"' not in text(response)  # no actions offered
    assert viewer.post(ACTION, {"names": ["cleanup"], "action": "pause"}).status_code == 403
    assert not redis_client.hget(KEYS.state("cleanup"), "paused")
    operator = logged_in("operator")
    response = operator.get(LIST)
    assert [key for key, _ in response.context["actions"]] == ["pause", "resume", "trigger"]
    assert operator.post(ACTION, {"names": ["cleanup"], "action": "remove"}).status_code == 403
    assert redis_client.hexists(KEYS.runtime_entries, "cleanup")
    post(operator, scope="names", names=["cleanup"], action="pause")
    assert redis_client.hget(KEYS.state("cleanup"), "paused") == b"1"
    staff_without = User.objects.create_user("nobody", "n@example.com", PASSWORD, is_staff=True)
    try:
        assert logged_in("nobody").get(LIST).status_code == 403
    finally:
        staff_without.delete()


def test_csrf_is_enforced_on_actions(manager: Manager, redis_client: redis.Redis) -> None:
    client = logged_in("root", csrf=True)
    data = {"scope": "names", "names": ["cleanup"], "action": "pause"}
    assert client.post(ACTION, data).status_code == 403
    assert not redis_client.hget(KEYS.state("cleanup"), "paused")
    page = text(client.get(LIST))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    response = client.post(ACTION, {**data, "csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 302
    assert redis_client.hget(KEYS.state("cleanup"), "paused") == b"1"


def test_the_action_endpoint_only_takes_post(manager: Manager) -> None:
    assert logged_in("root").get(ACTION).status_code == 405


# -- bad input and a cluster that cannot be reached ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"action": "explode", "names": ["cleanup"]}, "unknown action 'explode'"),
        ({"action": "pause"}, "select entries, or give a tag (not both)"),
        ({"action": "pause", "names": ["nope"]}, "no entry named 'nope'"),
        ({"action": "pause", "scope": "tag", "tag": "nope"}, "no entry has the tag 'nope'"),
        ({"action": "pause", "names": ["cleanup"], "note": "x" * 5000}, "field 'note'"),
        ({"action": "pause", "names": ["cleanup"], "next": "https://evil.example/"}, None),
    ],
)
def test_bad_input_is_a_message_not_a_500(
    manager: Manager, data: dict[str, Any], said: str | None
) -> None:
    response = post(logged_in("root"), **data)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == LIST
    if said is not None:
        assert any(said in m for m in shown_messages(response)), shown_messages(response)


def test_redis_down_is_a_message_and_no_password_is_shown(manager: Manager) -> None:
    down = Celery("down", broker="redis://:s3cret@127.0.0.1:1/0", set_as_current=False)
    down.conf.update(timezone="UTC", redis_socket_connect_timeout=1, broker_connection_retry=False)
    install(down)
    client = logged_in("root")
    with override_settings(FORK_SCHEDULER_ADMIN_APP=down):
        response = client.get(LIST)
        assert response.status_code == 200
        assert "Redis" in text(response) and "s3cret" not in text(response)
        response = post(client, scope="names", names=["x"], action="pause")
        assert response.status_code == 200
        assert shown_messages(response) and "s3cret" not in text(response)
        response = client.get(entry_url("x"), follow=True)
        assert response.status_code == 200 and "s3cret" not in text(response)
    down.close()


def test_a_bad_app_setting_is_a_message(manager: Manager) -> None:
    with override_settings(FORK_SCHEDULER_ADMIN_APP="no_such_module:app"):
        response = logged_in("root").get(LIST)
    assert response.status_code == 200
    assert "cannot import the Celery app 'no_such_module:app'" in text(response)
