"""Adversary round 3: reproductions that fail on the current code.

Each test quotes the promise it checks. Real redis-server (``redis_url``), fake clocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from app_helpers import two_task_app
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result
from replica_helpers import make_scheduler

from celery_fork_scheduler import Manager
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.testing import FakeClock

#: A monthly schedule whose next slot lies past year 9999 (month 100 000 after January 1970).
FAR_MONTHLY = "every 100000 months on 1"
#: An entry name as argv holds it when the terminal sent a byte that is not UTF-8
#: (Python decodes argv with ``surrogateescape``: b"caf\xe9" -> "caf\udce9").
NON_UTF8_NAME = "caf\udce9"


def cli(app: Celery, *args: str) -> Result:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(schedule, list(args), obj=obj)


def assert_one_line_error(result: Result, code: int) -> None:
    """cli.md, Conventions: "Errors — a mistake is one line on stderr, with no stack trace"."""
    unexpected = result.exception
    if isinstance(unexpected, SystemExit):
        unexpected = None
    assert unexpected is None, f"raised {unexpected!r} (a traceback), exit {result.exit_code}"
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def app(redis_url: str) -> Celery:
    return two_task_app("adv3", redis_url)


# -- a monthly schedule past year 9999 --------------------------------------------------------


def test_manager_add_of_a_monthly_schedule_past_year_9999_is_a_config_error(
    app: Celery, redis_client: redis.Redis
) -> None:
    """manager.md, Versions and stale updates: "A refused or invalid call leaves the stored
    entry exactly as it was: a bad schedule, a bad option, ... is a `ConfigError` naming the
    entry and the field, raised before anything is written."

    Instead: ``ValueError: year 10303 is out of range`` from
    ``schedules/calendar.py:_month_start`` (``Monthly._date_on_or_after`` walks past 9999)."""
    with pytest.raises(ConfigError) as caught:
        Manager(app).add("far", "tasks.cleanup", FAR_MONTHLY)
    assert caught.value.entry == "far"
    assert caught.value.field == "schedule"


def test_cli_next_of_a_monthly_schedule_past_year_9999_is_one_line_exit_2(app: Celery) -> None:
    """cli.md, `next EXPR`: "An invalid expression, or one that can never fire, exits with
    code 2" — and, Conventions, "a mistake is one line on stderr, with no stack trace".

    Instead: exit 1 with a ``ValueError`` traceback."""
    assert_one_line_error(cli(app, "next", FAR_MONTHLY), 2)


def test_cli_add_of_a_monthly_schedule_past_year_9999_is_one_line_exit_2(
    app: Celery, redis_client: redis.Redis
) -> None:
    """cli.md: exit code 2 is "bad input: an invalid schedule or definition", one line, no
    stack trace. Instead: exit 1 with a ``ValueError`` traceback."""
    assert_one_line_error(cli(app, "add", "far", "tasks.cleanup", FAR_MONTHLY), 2)


def test_validate_reports_a_monthly_schedule_past_year_9999_instead_of_crashing(
    redis_url: str,
) -> None:
    """manager.md, Reading: "`check()` loads the whole schedule entry by entry ... and returns
    every problem, not only the first ... it never raises for a bad definition."
    cli.md, `validate`: reports every problem and exits 1.

    Instead: ``Manager.check()`` raises ``ValueError`` and ``validate`` dies with a traceback,
    so one bad entry hides every other problem of the deploy gate."""
    bad_app = two_task_app(
        "adv3-validate",
        redis_url,
        extra_entries={"far": {"task": "tasks.cleanup", "schedule": FAR_MONTHLY}},
    )
    problems = Manager(bad_app).check()
    assert [(p.entry, p.field) for p in problems if p.severity == "error"] == [("far", "schedule")]
    result = cli(bad_app, "validate")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert "far" in result.stdout + result.stderr


def test_beat_refuses_a_monthly_schedule_past_year_9999_with_a_config_error(
    redis_url: str, clock: FakeClock
) -> None:
    """guarantees.md, failure table: "A bad entry or setting | Beat refuses to start. |
    `ConfigError` naming the entry and the field (or the setting)."

    Instead: a bare ``ValueError`` from the schedule maths, naming neither."""
    bad_app = two_task_app(
        "adv3-beat",
        redis_url,
        extra_entries={"far": {"task": "tasks.cleanup", "schedule": FAR_MONTHLY}},
    )
    with pytest.raises(ConfigError) as caught:
        make_scheduler(redis_url, clock, app=bad_app)
    assert caught.value.entry == "far"
    assert caught.value.field == "schedule"


# -- names that are not valid UTF-8 -----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["show", NON_UTF8_NAME],
        ["pause", NON_UTF8_NAME],
        ["trigger", NON_UTF8_NAME],
        ["remove", NON_UTF8_NAME],
        ["history", NON_UTF8_NAME],
        ["add", NON_UTF8_NAME, "tasks.cleanup", "every 5 minutes"],
        ["add", "ok", "tasks.cleanup", "every 5 minutes", "--tag", NON_UTF8_NAME],
        ["pause", "cleanup", "--note", NON_UTF8_NAME],
    ],
    ids=["show", "pause", "trigger", "remove", "history", "add", "add-tag", "pause-note"],
)
def test_cli_with_an_argument_that_is_not_utf8_is_one_line(
    app: Celery, redis_client: redis.Redis, command: list[str]
) -> None:
    """cli.md, Conventions: "Errors — a mistake is one line on stderr, with no stack trace";
    exit 1 for "no such entry", 2 for "bad input: ... a name with `{`, `}` or control
    characters".

    A name typed in a Latin-1 terminal reaches argv as ``caf\\udce9`` (surrogateescape).
    Instead: a ``UnicodeEncodeError`` traceback from redis-py encoding the name (exit 1)."""
    result = cli(app, *command)
    unexpected = result.exception
    if isinstance(unexpected, SystemExit):
        unexpected = None
    assert unexpected is None, f"raised {unexpected!r} (a traceback)"
    assert result.exit_code in (1, 2)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_add_file_with_a_lone_surrogate_name_is_refused_in_one_line(
    app: Celery, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """cli.md, `add --file FILE`: "Every entry is checked before any is added: one bad entry
    ... adds none, and the error line names each bad entry and field (the first ten), exit 2."

    ``"\\ud800"`` is valid JSON (json.loads accepts it). Instead: a ``UnicodeEncodeError``
    traceback from ``store.versions`` (Manager.add_many asks Redis before checking it)."""
    path = tmp_path / "entries.json"
    path.write_text(
        json.dumps(
            [
                {"name": "fine", "task": "tasks.cleanup", "schedule": "every 5 minutes"},
                {"name": "bad\ud800", "task": "tasks.cleanup", "schedule": "every 5 minutes"},
            ]
        ),
        encoding="ascii",
    )
    assert_one_line_error(cli(app, "add", "--file", str(path)), 2)
    assert redis_client.hlen("scheduler:{runtime}:entries") == 0


# -- a normal stop with a published slot whose record is still to be written ------------------


def test_a_normal_stop_records_a_published_slot_kept_from_a_redis_blip(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """guarantees.md, promise 4: "A normal stop (SIGTERM, SIGINT) waits until the batch in
    hand is published and recorded." and "From the claim to the record, SIGTERM and SIGINT
    are held back and delivered when the batch is recorded".

    Fence path (the broker does not share the claims' Redis). The record of a published slot
    fails on a blip and is kept in memory (``PublishPipeline.unmarked``) to be tried at the
    next tick; Redis is back, and beat gets a normal stop before that tick (Celery's handler
    calls ``scheduler.close()``). Instead: ``Scheduler.close``/``sync`` never write the kept
    record, so the slot stays fenced (``publishing``) in Redis for good: every other replica
    later reports a slot that WAS published as ``in_flight`` (maybe lost) and its state never
    says ``sent``."""
    from datetime import timedelta

    from celery_fork_scheduler import every
    from celery_fork_scheduler.errors import BackendUnavailableError
    from celery_fork_scheduler.keys import Keys
    from celery_fork_scheduler.testing import RecordingPublisher

    keys = Keys("scheduler:")
    publisher = RecordingPublisher()
    scheduler = make_scheduler(
        redis_url, clock, {"job": {"task": "t", "schedule": every(10).seconds}}, publisher=publisher
    )
    real_mark_sent = scheduler.backend.mark_sent
    blips = [1]

    def mark_sent_once_down(claims, outcome="sent"):  # type: ignore[no-untyped-def]
        if blips:
            blips.pop()
            raise BackendUnavailableError("blip")
        return real_mark_sent(claims, outcome=outcome)

    scheduler.backend.mark_sent = mark_sent_once_down  # type: ignore[method-assign]
    try:
        for _ in range(60):  # up to the first slot (10:00:10) and just past it
            clock.advance(timedelta(seconds=0.25))
            scheduler.tick()
            if publisher.occurrences:
                break
        assert len(publisher.occurrences) == 1
        assert scheduler.pipeline.unmarked, "the record was expected to be kept for later"
    finally:
        scheduler.close()  # the normal stop: Celery's beat handler syncs and closes
    assert redis_client.hget(keys.state("job"), "state") == b"sent"
    assert redis_client.hlen(keys.pending("job")) == 0
