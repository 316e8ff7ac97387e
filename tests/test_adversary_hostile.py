"""Adversarial review of issue 16 (hostile input): reproductions that fail on HEAD.

Each test names the promise of docs/security.md it breaks and the mechanism. Real Redis via the
``redis_url`` / ``redis_client`` fixtures; the CLI through click's CliRunner.
"""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler.backends.redis_connection import client_from_url, mask_url
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.held import error_text
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import free_port

SECRET = "TOPSECRET"
UTC = timezone.utc
KEYS = Keys("scheduler:")


def make_app(redis_url: str, **conf: Any) -> Celery:
    app = Celery("adversary", set_as_current=False, broker="memory://")
    app.conf.update(timezone="UTC", beat_schedule={}, fork_scheduler_redis_url=redis_url, **conf)

    @app.task(name="tasks.t", shared=False)  # type: ignore[untyped-decorator]
    def t(*args: Any, **kwargs: Any) -> None: ...

    return app


def cli(app: Celery, *args: str) -> Result:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(schedule, list(args), obj=obj)


# -- secrets --------------------------------------------------------------------------------------


def test_cli_error_leaks_a_password_given_in_the_url_query_string() -> None:
    """Promise (security.md "Passwords are masked"): the password of the Redis URL is replaced
    by ``**`` in every CLI error. Mechanism: redis-py takes ``?password=`` from the query string
    (a documented redis-py URL form), but ``mask_url`` only hides what sits before the last
    ``@``; a URL without ``@`` is printed verbatim in "cannot reach Redis at ...", exit 3."""
    url = f"redis://127.0.0.1:{free_port()}/0?password={SECRET}"
    assert redis.Redis.from_url(url).connection_pool.connection_kwargs["password"] == SECRET
    app = make_app(url)
    try:
        result = cli(app, "list")
    finally:
        app.close()
    assert result.exit_code == 3, result.output
    assert SECRET not in result.output


@pytest.mark.parametrize(
    "url",
    [
        f"unix:///tmp/redis.sock?password={SECRET}",
        f"rediss://redis.internal:6380/0?username=fork&password={SECRET}",
    ],
)
def test_banner_and_errors_show_query_string_passwords(url: str) -> None:
    """Promise: the banner, ``describe()``, logs and errors mask the password in every URL
    form (unix, rediss ...). Mechanism: ``mask_url`` (used by all of them) returns a URL
    without ``@`` unchanged, so a password passed as a query argument -- which redis-py
    honours for every scheme -- is shown in clear."""
    assert SECRET not in mask_url(url)


def test_sentinel_password_with_a_semicolon_leaks_its_start_in_the_config_error() -> None:
    """Promise: "a password holding an unencoded ``;`` ... never shows in part".
    Mechanism: for ``sentinel://`` ``mask_url`` splits on ``;`` before looking for ``@``, so
    the part ``sentinel://:HEADSECRET`` has no ``@`` and is kept verbatim; the ConfigError that
    ``client_from_url`` raises for such a URL prints the password's first half."""
    url = "sentinel://:HEADSECRET;TAIL@s1:26379;sentinel://s2:26379"
    assert "HEADSECRET" not in mask_url(url)
    with pytest.raises(ConfigError) as caught:
        client_from_url(url)
    assert "HEADSECRET" not in str(caught.value)


def test_task_error_with_a_query_string_password_is_stored_and_printed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Promise: task errors stored in history are scrubbed of credentials and the CLI masks URL
    credentials in them (``history``, ``show``, ``--json``). Mechanism: ``scrub_secrets``
    only knows ``scheme://user:secret@``; the ubiquitous redis-py/kombu form
    ``redis://host/0?password=secret`` (or ``...&password=``) passes through both the worker's
    ``held.error_text`` and the CLI's ``_scrub``."""
    error = ConnectionError(f"cannot connect to redis://cache:6379/0?password={SECRET}")
    stored = error_text(error)
    assert SECRET not in stored, stored

    app = make_app(redis_url)
    try:
        Manager(app).add("fine", "tasks.t", every(1).minutes)
        item = {"slot": "2026-03-02T10:00:00+00:00", "outcome": "error", "error": stored}
        redis_client.lpush(KEYS.history("fine"), json.dumps(item))
        outputs = [cli(app, "history", "fine").output, cli(app, "show", "fine", "--json").output]
    finally:
        app.close()
    for output in outputs:
        assert SECRET not in output, output


# -- flooding -------------------------------------------------------------------------------------


# -- unconfirmed suspicions (not tests) -----------------------------------------------------------
#
# * No cap on the number of runtime entries: 100 000 entries each at the 1 s floor are all
#   accepted (every entry is within its own limits), i.e. 100 000 messages/s. The issue asks for
#   "size limits on stored entries"; an entry-count quota is not promised, so not filed as a test.
# * fork_scheduler_redis_options is passed through unchecked: {"socket_timeout": None} or a
#   redis Retry with 10**9 attempts passes start-up and can hang beat on a hung Redis, despite
#   "every setting has a range" (settings.md lists no range for redis_options).
# * fork_scheduler_redis_url is not checked for control characters (``_optional_str``); a URL
#   holding ESC reaches the beat banner / start-up ConfigError unescaped (the CLI escapes it).
#   Beat's own log is not covered by the "terminal output is escaped" promise, so not filed.
# * _sampled_gap (min_interval > 1 s only) samples 50 slots after 2030-01-01 and ignores DST;
#   a cron at a wall time repeated at fall-back (e.g. ``30 1 * * *`` in a DST zone) may fire
#   twice an hour apart; not checked whether this beats a floor above one hour.
# * Manager.next_runs(name, n) has no bound through the Python API (the CLI bounds -n).

# Triaged as a design decision, not a bug: catchup="all" replays up to 1000 missed slots
# per entry after an outage, even for an entry at the interval floor (documented in
# docs/security.md and docs/schedules.md; bound it with catchup_window).
