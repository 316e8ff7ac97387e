"""Adversary round 65, schedule semantics and bad input: found failing by round 65 and fixed
with this file.

Area: cron (5 and 6 fields, ranges, steps, names, ``L``/``W``/``#``, macros, the day rule) and
daylight saving compared with cronsim and with Celery's own ``is_due``; the ``every(...)``
builder; Celery's native schedules; bad input in ``beat_schedule``, in the ``Manager`` API and
in ``celery schedule`` (``add``, ``add --file`` with JSON and YAML, ``remove``, ``pause``, ...).

The first section holds the FINDINGS: each test FAILS on HEAD and its docstring gives the
scenario, what the docs promise and what happens. The second section holds checks that HELD
(they pass) and are worth keeping. Real Redis only (the session's ``redis_url``); no sleeps.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from app_helpers import two_task_app
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_fork_scheduler import ConfigError, Manager
from celery_fork_scheduler.cli import schedule as schedule_command
from celery_fork_scheduler.entry import entries_from_config
from celery_fork_scheduler.keys import Keys

UTC = timezone.utc
KEYS = Keys("scheduler:")
Run = Callable[..., Result]


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = two_task_app("round65", redis_url)
    yield app
    app.close()


@pytest.fixture
def cli(app: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.chdir(tmp_path)

    def run(*args: str, stdin: str | None = None) -> Result:
        obj = CLIContext(app=app, no_color=True, workdir=None)
        return CliRunner().invoke(schedule_command, list(args), obj=obj, input=stdin)

    return run


def _runtime_names(client: redis.Redis) -> set[str]:
    return {name.decode() for name in client.hkeys(KEYS.runtime_entries)}


def _stored(client: redis.Redis, name: str) -> dict[str, Any]:
    raw = client.hget(KEYS.runtime_entries, name)
    assert raw is not None, f"no runtime entry {name!r}"
    return dict(json.loads(raw))


ENTRY_A = {"task": "tasks.cleanup", "schedule": "every 5 minutes", "args": ["first"]}
ENTRY_B = {"task": "tasks.cleanup", "schedule": "@daily", "args": ["second"]}


# =================================================================================================
# FINDINGS: each test FAILS on HEAD
# =================================================================================================


def test_add_file_object_form_with_a_duplicate_name_is_refused_like_the_list_form(
    cli: Run, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Scenario: ``celery schedule add --file tenants.json`` where the file, written as an object
    name -> entry ("as ``beat_schedule`` is written", docs/cli.md), defines ``sync`` twice (a
    copy-paste: two different definitions under the same name).

    Promise: docs/cli.md, ``add --file``: "Every entry is checked before any is added: one bad
    entry ... adds none, and the error line names each bad entry and field". The same two
    definitions written in the list form are refused, exit 2: "entry 'sync', field 'name': is
    given more than once".

    What happens: exit 0, "added 1 entry ...: sync"; the first definition (every 5 minutes,
    args ["first"]) is silently dropped and the second stored. ``json.loads`` keeps the last of
    duplicate keys, and ``cli/entries_file.py:read_entries`` never sees the first.
    """
    a, b = json.dumps(ENTRY_A), json.dumps(ENTRY_B)
    (tmp_path / "list.json").write_text(
        json.dumps([{"name": "sync", **ENTRY_A}, {"name": "sync", **ENTRY_B}])
    )
    (tmp_path / "object.json").write_text(f'{{"sync": {a}, "sync": {b}}}')
    as_list = cli("add", "--file", "list.json")
    assert as_list.exit_code == 2 and "is given more than once" in as_list.stderr  # the reference
    as_object = cli("add", "--file", "object.json")
    assert (as_object.exit_code, _runtime_names(redis_client)) == (2, set()), (
        f"the object form with 'sync' twice: exit {as_object.exit_code}, "
        f"{as_object.output.strip()!r}; stored {sorted(_runtime_names(redis_client))} "
        "(the first definition was dropped without a word)"
    )


def test_add_file_yaml_with_a_duplicate_name_is_refused_like_the_list_form(
    cli: Run, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Scenario: ``celery schedule add --file tenants.yaml`` whose mapping defines ``sync``
    twice.

    Promise: as for JSON (docs/cli.md ``add --file``): every entry is checked, one bad entry adds
    none; in the list form the duplicate is refused ("is given more than once").

    What happens: exit 0, ``sync`` stored with the second definition; the first is silently
    lost. PyYAML's ``safe_load`` keeps the last of duplicate mapping keys (YAML itself says
    mapping keys are unique), and ``cli/entries_file.py:_yaml`` does not check.
    """
    (tmp_path / "tenants.yaml").write_text(
        "sync:\n  task: tasks.cleanup\n  schedule: every 5 minutes\n  args: [first]\n"
        "sync:\n  task: tasks.cleanup\n  schedule: '@daily'\n  args: [second]\n"
    )
    result = cli("add", "--file", "tenants.yaml")
    assert (result.exit_code, _runtime_names(redis_client)) == (2, set()), (
        f"a YAML file with 'sync' twice: exit {result.exit_code}, {result.output.strip()!r}; "
        f"stored {sorted(_runtime_names(redis_client))}"
    )


def test_add_file_object_form_refuses_an_inner_name_that_differs_from_its_key(
    cli: Run, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Scenario: ``add --file`` with ``{"sync-acme": {"name": "sync-globex", "task": ...}}``
    (a file converted from the list form by hand, the inner ``name`` left behind and wrong).

    Promise: docs/schedules.md, Entry keys: "An unknown key ... stops beat at start-up with a
    ConfigError naming the entry and the key" -- ``name`` is not an entry key, and in
    ``beat_schedule`` the same object is refused ("entry 'sync-acme', field 'name': unknown
    key"). ``add --file`` takes "an object name -> entry, as ``beat_schedule`` is written".

    What happens: exit 0, the entry is stored as ``sync-acme``; the conflicting ``name`` is
    overwritten without a word (``read_entries`` builds ``{**entry, "name": key}``), so the
    operator who meant ``sync-globex`` gets the other tenant's name.
    """
    with pytest.raises(ConfigError, match="name"):  # the reference: beat_schedule refuses it
        entries_from_config(
            {"sync-acme": {"name": "sync-globex", **ENTRY_A}}, default_timezone=ZoneInfo("UTC")
        )
    (tmp_path / "entries.json").write_text(
        json.dumps({"sync-acme": {"name": "sync-globex", **ENTRY_A}})
    )
    result = cli("add", "--file", "entries.json")
    assert result.exit_code == 2, (
        f"exit {result.exit_code}, {result.output.strip()!r}: stored "
        f"{sorted(_runtime_names(redis_client))}, the inner name 'sync-globex' ignored"
    )


def test_add_file_yaml_schedule_10_30_is_not_silently_an_interval_of_630_seconds(
    cli: Run, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Scenario: ``add --file report.yaml`` with ``schedule: 10:30`` (unquoted, as one writes a
    time in YAML), meaning "at 10:30" -- the string form docs/schedules.md lists (``"at 10:30"``
    / ``"daily at 10:30"``).

    What happens: exit 0, the entry is stored as ``every 630 seconds``. PyYAML reads ``10:30``
    as a YAML 1.1 base-60 integer (10 * 60 + 30), and a number is an interval in seconds. The
    entry fires every 10.5 minutes instead of once a day, with no warning. (``jitter: 1:30``
    becomes 90 s the same way.)

    Expected: the time of day kept as text (and then "at 10:30" or a parse error naming the
    field), or the value refused -- not a schedule 137 times as frequent. Arguable: it is
    YAML 1.1's rule, but the docs say nothing about it and the result is silent and harmful.
    """
    (tmp_path / "report.yaml").write_text("report:\n  task: tasks.report\n  schedule: 10:30\n")
    result = cli("add", "--file", "report.yaml")
    stored = _stored(redis_client, "report") if result.exit_code == 0 else None
    assert result.exit_code != 0 or "630" not in json.dumps(stored), (
        f"'schedule: 10:30' in YAML was stored as {stored and stored.get('schedule')!r} "
        f"({result.output.strip()!r})"
    )


def test_manager_add_with_a_non_task_object_names_the_value_given(app: Celery) -> None:
    """Scenario: ``Manager(app).add("nightly-x", 5, "@daily")`` (a wrong value for ``task``).

    Promise: docs/manager.md, Errors: a ``ConfigError`` (``.entry``, ``.field``) for a bad
    definition; every other wrong type elsewhere is shown as given (``not 5``).

    What happens: ``ConfigError: entry 'nightly-x', field 'task': must be a task name
    (non-empty string), not None`` -- the message names ``None``, a value the caller never
    passed. ``Manager.add`` turns a non-string task into ``getattr(task, "name", None)`` before
    the check (``manager.py``), so the error reports the converted value.
    """
    with pytest.raises(ConfigError) as caught:
        Manager(app).add("nightly-x", 5, "@daily")
    assert caught.value.field == "task"
    assert "not None" not in str(caught.value) and "5" in str(caught.value), str(caught.value)


def test_a_whitespace_only_task_name_is_refused_like_a_whitespace_only_entry_name(
    app: Celery, cli: Run, redis_client: redis.Redis
) -> None:
    """Scenario: ``celery schedule add nightly '   ' @daily`` (an empty shell variable padded
    with spaces), or ``"task": "   "`` in ``beat_schedule`` / ``Manager.add``.

    Promise: docs/schedules.md: ``task`` is the task name (required); the error text itself
    says "must be a task name (non-empty string)". An entry *name* of spaces is refused
    ("entry names must be non-empty strings, not ' '"), and a blank task name is no task name.

    What happens: accepted everywhere; the CLI prints only "warning: task '   ' is not
    registered" and stores the entry, exit 0. Every slot then publishes a message for a task
    named ``'   '`` that no worker can run. ``entry.py`` checks ``not task`` where it checks
    ``not name.strip()`` for names.
    """
    with pytest.raises(ConfigError, match="task"):
        entries_from_config(
            {"blank": {"task": "   ", "schedule": "@daily"}}, default_timezone=ZoneInfo("UTC")
        )
    result = cli("add", "blank", "   ", "@daily")
    assert (result.exit_code, _runtime_names(redis_client)) == (2, set()), result.output


def test_a_fixed_offset_tzinfo_in_the_timezone_key_is_refused_naming_timezone() -> None:
    """Scenario: ``beat_schedule = {"report": {"task": ..., "schedule": "@daily", "timezone":
    timezone(timedelta(hours=5, minutes=45))}}`` (Nepal's offset as a ``datetime.timezone``).

    Promise: docs/schedules.md, Entry keys: a value of the wrong type (or an unknown zone) stops
    beat "with a ConfigError naming the entry and the key"; an unknown zone is "an error at load
    time". The key at fault is ``timezone``: the string form (``"timezone": "Nope/Nope"``) is
    refused with ``field 'timezone'``.

    What happens: ``ConfigError: entry 'report', field 'schedule': time zone UTC+05:45 is a
    fixed offset no IANA zone names ...`` -- the error names ``schedule``, which is right, and
    sends the operator to the wrong key. ``entry.py:_zone`` lets any ``tzinfo`` through, and the
    conversion fails later inside the schedule's ``resolve_timezone`` (caught as the schedule's
    error); ``_zone_name`` (which would name ``timezone``) is reached only after it.
    """
    with pytest.raises(ConfigError) as caught:
        entries_from_config(
            {
                "report": {
                    "task": "tasks.report",
                    "schedule": "@daily",
                    "timezone": timezone(timedelta(hours=5, minutes=45)),
                }
            },
            default_timezone=ZoneInfo("UTC"),
        )
    assert caught.value.field == "timezone", str(caught.value)


def test_relative_of_the_wrong_type_is_refused_as_the_entry_keys_table_says(app: Celery) -> None:
    """Scenario: ``"relative": "yes"`` (or ``5``) in a ``beat_schedule`` entry or in
    ``Manager.add(..., relative="yes")``.

    Promise: docs/schedules.md, Entry keys: ``relative`` | ``bool`` | accepted for compatibility
    with Celery, ignored; and "An unknown key ... or a value of the wrong type stops beat at
    start-up with a ConfigError naming the entry and the key". Every other boolean key
    (``enabled``, ``singleton``, ``one_off``, ``pause_on_failure``) is refused when it is not
    ``True``/``False`` ("must be True or False, not 'no'").

    What happens: accepted silently, in ``beat_schedule`` and by ``Manager.add``.
    Low severity (the key is ignored), but the type table and the refusal rule are not kept.
    """
    with pytest.raises(ConfigError, match="relative"):
        entries_from_config(
            {"r": {"task": "tasks.cleanup", "schedule": 30, "relative": "yes"}},
            default_timezone=ZoneInfo("UTC"),
        )


def test_dropping_the_timezone_key_gives_the_schedule_its_own_zone_back(app: Celery) -> None:
    """Scenario: app ``timezone = "America/New_York"``. A runtime entry
    ``manager.add("f", "tasks.cleanup", "daily at 10:30 in Europe/Berlin")`` fires at 10:30
    Berlin. An operator sets ``manager.update("f", timezone="Asia/Tokyo")`` for a while, then
    takes it back with ``manager.update("f", timezone=None)``.

    Promise: docs/schedules.md, Time zones: the zone is, from strongest to weakest, "1. the
    entry's ``timezone`` key: it overrides everything, including a zone given in the schedule
    itself; 2. the schedule's own zone (``"... in Asia/Tokyo"``); 3. the app's ``timezone``".
    An override dropped leaves the schedule's own zone (2) in force; docs/manager.md:
    "``timezone=None`` drops the entry's own zone" -- the key, not the schedule's ``in
    Europe/Berlin``.

    What happens: after the round trip the entry is "daily at 10:30 in America/New_York" and
    fires at 15:30 UTC instead of 09:30 UTC, six hours off, with nothing said. The stored
    schedule keeps a single resolved ``tz``: setting the key overwrote Berlin, and dropping it
    re-resolves to the app's zone. (The same for an entry added with both
    ``"... in Europe/Berlin"`` and ``timezone="Asia/Tokyo"``, then ``timezone=None``.)
    """
    app.conf.timezone = "America/New_York"
    manager = Manager(app)
    after = datetime(2026, 1, 5, tzinfo=UTC)
    manager.add("f", "tasks.cleanup", "daily at 10:30 in Europe/Berlin")
    before = manager.next_runs("f", 1, after=after)
    assert before == [datetime(2026, 1, 5, 9, 30, tzinfo=UTC)]
    manager.update("f", timezone="Asia/Tokyo")
    manager.update("f", timezone=None)
    assert manager.next_runs("f", 1, after=after) == before, (
        f"after timezone='Asia/Tokyo' then timezone=None the entry is "
        f"{manager.get('f').schedule_text!r}, next {manager.next_runs('f', 1, after=after)}, "
        f"not 'in Europe/Berlin' at {before}"
    )


def test_every_2_months_without_on_is_not_called_an_unknown_unit() -> None:
    """Scenario: ``"schedule": "every 2 months"`` (or ``celery schedule add x t 'every 3
    months'``), the string twin of ``every(3).months``, which the builder accepts (day 1 by
    default, docs/schedules.md "Months").

    Promise: docs/schedules.md, String forms: ``"every 3 months on 1 at 06:00"`` is the
    month form; a mistake gives a message that says what is wrong. ``"every month"`` does:
    "unknown unit or weekday 'month': expected seconds, minutes, hours, days, weeks,
    'months on ...' or monday ... sunday".

    What happens: ``cannot parse schedule 'every 2 months': unknown unit 'months', expected
    seconds, minutes, hours, days or weeks`` -- months is a unit of this very parser, and the
    message hides the form that works (``on <days>``). ``parsing.py:_parse_every_unit`` raises
    for any count followed by a unit it does not know before ``_parse_monthly`` is tried.
    """
    from celery_fork_scheduler.errors import ScheduleError
    from celery_fork_scheduler.schedules import parse_schedule

    with pytest.raises(ScheduleError) as caught:
        parse_schedule("every 2 months")
    message = str(caught.value)
    assert "unknown unit 'months'" not in message and "months on" in message, message


def test_the_job_builder_refuses_an_empty_name_instead_of_dropping_it(
    app: Celery, redis_client: redis.Redis
) -> None:
    """Scenario: ``manager.every(5).minutes.name(tenant_name).do("tasks.cleanup")`` where
    ``tenant_name`` came out empty (``""``).

    Promise: docs/manager.md, Building jobs: ``.name("report-eu")`` is the entry name, the
    default ``"<task name>@<schedule>"`` only when none is given; entry names "must be non-empty
    strings" (``Manager.add("", ...)`` is a ``ConfigError`` naming the field ``name``, and so is
    ``celery schedule add '' ...``).

    What happens: the empty name is taken as "no name": the job is stored as
    ``'tasks.cleanup@every 5 minutes'``. Built in a loop over tenants, every tenant whose name
    came out empty lands on that one default entry (the second is refused as a duplicate, or
    replaces the first with ``replace_existing``). ``JobBuilder.do`` treats a falsy name like
    ``None``.
    """
    manager = Manager(app)
    with pytest.raises(ConfigError) as caught:
        job = manager.every(5).minutes.name("").do("tasks.cleanup")
        stored = sorted(_runtime_names(redis_client))
        pytest.fail(f"stored as {job.name!r}; runtime entries {stored}")
    assert caught.value.field == "name"
    assert _runtime_names(redis_client) == set()


# =================================================================================================
# HELD: checks that pass on HEAD, kept as regression guards
# =================================================================================================


def _cronsim_wall_slots(expr: str, zone: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    """cronsim's naive wall times mapped through the documented DST rule (a skipped time: the
    first valid instant after the gap; a repeated time: its first occurrence)."""
    from cronsim import CronSim

    def exists(wall: datetime) -> bool:
        return (
            wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
        )

    found: list[datetime] = []
    for wall in CronSim(expr, after.astimezone(zone).replace(tzinfo=None)):
        probe = wall
        if not exists(probe):
            probe = wall.replace(second=0) + timedelta(minutes=1)
            while not exists(probe):
                probe += timedelta(minutes=1)
        instant = probe.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant > after and (not found or instant > found[-1]):
            found.append(instant)
            if len(found) == count:
                return found
    return found


HELD_ZONES = ("Europe/London", "Asia/Kathmandu", "Australia/Lord_Howe", "Antarctica/Troll")


@pytest.mark.parametrize("zone_name", HELD_ZONES)
def test_held_cron_agrees_with_cronsim_from_inside_gaps_and_folds(zone_name: str) -> None:
    """HELD. Starts spread over +-2 h around every transition of 2024-2028 (so inside repeated
    hours, where ``next_slot`` takes the fold branch), in zones the differential test does not
    use: London, Kathmandu (+05:45), Lord Howe (30-minute DST), Troll (a 2-hour DST jump).
    ``previous_slot(next_slot(t)) == next_slot(t)`` too."""
    from celery_fork_scheduler.schedules import cron

    zone = ZoneInfo(zone_name)
    rng = random.Random(65)
    expressions = [
        "*/15 * * * *",
        "30 1,2 * * *",
        "*/10 * * * * *",
        "0 0-3 * * *",
        "45 1 * * sun",
        "15,45 * * * *",
        "0 2 L * *",
        "0 1 * * 0#1",
        "0 2 * * 5L",
        "7 */2 * * mon-fri",
    ]
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    transitions = []
    offset = moment.astimezone(zone).utcoffset()
    while moment < datetime(2029, 1, 1, tzinfo=UTC):
        following = moment + timedelta(hours=6)
        if following.astimezone(zone).utcoffset() != offset:
            transitions.append(following)
            offset = following.astimezone(zone).utcoffset()
        moment = following
    for expr in expressions:
        schedule = cron(expr, zone_name)
        for near in transitions or [datetime(2026, 3, 29, tzinfo=UTC)]:
            after = near + timedelta(seconds=rng.randint(-7_200, 7_200))
            ours: list[datetime] = []
            current = after
            while len(ours) < 4:
                current = schedule.next_slot(current)
                assert current is not None
                ours.append(current)
            assert ours == _cronsim_wall_slots(expr, zone, after, 4), (expr, zone_name, after)
            assert schedule.previous_slot(ours[0]) == ours[0]


@pytest.mark.parametrize(
    ("args", "code", "match"),
    [
        (["add", "a1", "tasks.cleanup", "*/10 * * * * * *"], 2, "field 'schedule'"),
        (["add", "a1", "tasks.cleanup", "@reboot"], 2, "unknown macro"),
        (["add", "a1", "tasks.cleanup", "5-2 * * * *"], 2, "runs backwards"),
        (["add", "a1", "tasks.cleanup", "@daily", "--tz", "Mars/Base"], 2, "field 'timezone'"),
        (["add", "a1", "tasks.cleanup", "@daily", "--jitter", "nan"], 2, "field 'jitter'"),
        (["add", "a1", "tasks.cleanup", "@daily", "--exclude", "2026-02-30"], 2, "'exclude'"),
        (["add", "a1", "tasks.cleanup", "@daily", "--args", "[1e999]"], 2, "field 'args'"),
        (["add", "keep", "tasks.cleanup", "0 0 30 2 *", "--replace"], 2, "never fires"),
        (["add", "keep", "tasks.cleanup", "@daily", "--replace", "--tz", "X/Y"], 2, "timezone"),
        (["remove", "nosuch"], 1, "no entry named 'nosuch'"),
        (["remove", "--tag", "nosuch", "--yes"], 1, "no runtime entries tagged"),
        (["pause", "--tag", "nosuch", "--yes"], 1, "no entries tagged"),
        (["next", "0 0 L/2 * *"], 2, "day-of-month field"),
    ],
)
def test_held_cli_bad_input_is_one_line_and_keeps_what_redis_holds(
    cli: Run, redis_client: redis.Redis, args: list[str], code: int, match: str
) -> None:
    """HELD. One line on stderr, the documented exit code, no traceback, and the stored entry
    ``keep`` byte for byte as it was."""
    assert cli("add", "keep", "tasks.cleanup", "every 5 minutes", "--tag", "t1").exit_code == 0
    before = {key: redis_client.dump(key) for key in redis_client.keys("*")}
    result = cli(*args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert {key: redis_client.dump(key) for key in redis_client.keys("*")} == before


def _celery_beat_fires(
    kwargs: dict[str, Any], zone: str, start: datetime, end: datetime
) -> list[datetime]:
    """When Celery's own beat would run a ``crontab(**kwargs)`` entry: ``is_due`` on an injected
    clock, ticking when it says, ``last_run_at`` moved to each run (as ``_next_instance``)."""
    from celery.schedules import crontab

    app = Celery(set_as_current=False)
    app.conf.timezone = zone
    now = {"t": start}
    schedule = crontab(app=app, nowfun=lambda: now["t"], **kwargs)
    fires, last, moment = [], start, start
    while moment < end:
        now["t"] = moment
        due, wait = schedule.is_due(last)
        if due:
            fires.append(moment)
            last = moment
        moment += timedelta(seconds=max(min(wait, 300), 0.001))
    return [(fire + timedelta(milliseconds=500)).replace(microsecond=0) for fire in fires]


@pytest.mark.parametrize(
    ("zone", "fold_utc"),
    [
        ("America/New_York", datetime(2026, 11, 1, 6, tzinfo=UTC)),
        ("Australia/Lord_Howe", datetime(2026, 4, 4, 15, tzinfo=UTC)),
        ("Europe/London", datetime(2026, 10, 25, 1, tzinfo=UTC)),
    ],
)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"minute": 30, "hour": 1},
        {"minute": 0},
        {"minute": "*/20", "hour": "0-3"},
        {"minute": "15,45", "hour": "1,2"},
    ],
    ids=["1:30", "hourly", "every-20-0-3h", "15,45-1,2h"],
)
def test_held_a_crontab_in_a_repeated_hour_fires_as_celerys_beat(
    zone: str, fold_utc: datetime, kwargs: dict[str, Any]
) -> None:
    """HELD. docs/schedules.md: for ``crontab`` only a time inside a gap differs from Celery
    ("Times that exist are unaffected"); in a repeated hour (fall back, Lord Howe's 30-minute
    one included) the slots equal the runs Celery's own ``is_due`` gives."""
    from celery.schedules import crontab

    from celery_fork_scheduler.schedules import from_celery

    start, end = fold_utc - timedelta(hours=3), fold_utc + timedelta(hours=3)
    ours = [slot for slot in from_celery(crontab(**kwargs), zone).slots(start, end) if slot < end]
    assert ours == _celery_beat_fires(kwargs, zone, start, end)


def test_add_file_refuses_a_field_given_twice_in_one_entry(
    cli: Run, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Written with the fixes: a field twice inside an entry (``"schedule"`` twice: the parser
    would keep the second) is refused naming the entry and the field; nothing is stored."""
    (tmp_path / "twice.json").write_text(
        '[{"name": "sync", "task": "tasks.cleanup", "schedule": "@daily", "schedule": 5}]'
    )
    result = cli("add", "--file", "twice.json")
    assert result.exit_code == 2, result.output
    assert "entry 'sync', field 'schedule'" in result.stderr, result.stderr
    assert _runtime_names(redis_client) == set()


def test_next_tz_stands_for_the_app_zone_not_over_the_expression_s_own(cli: Run) -> None:
    """Reported by round 65 and fixed with this file: ``schedule next '... in Europe/Berlin'
    --tz Asia/Tokyo`` used Tokyo, though ``--tz`` stands for the app's zone (docs/cli.md), which
    ranks below a zone the schedule names itself; an expression without one takes ``--tz``."""
    own = cli("next", "daily at 10:30 in Europe/Berlin", "-n", "1", "--tz", "Asia/Tokyo", "--json")
    assert own.exit_code == 0, own.output
    assert json.loads(own.stdout)["timezone"] == "Europe/Berlin"
    plain = cli("next", "daily at 10:30", "-n", "1", "--tz", "Asia/Tokyo", "--json")
    assert json.loads(plain.stdout)["timezone"] == "Asia/Tokyo"
    bad = cli("next", "daily at 10:30", "--tz", "Nope/Nope")
    assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output
