"""Adversary round 38: schedule semantics and bad input (schedules, Manager, CLI).

Each test's docstring names the promise, what happened and where. All were found failing by
round 38 and fixed: a runtime entry keeps its own ``timezone`` key when stored; an interval
whose first slot no ``datetime`` holds is a ScheduleError; a ``ZoneInfo`` without an IANA key is
refused; a yearly exclusion date is matched whole (``fullmatch``: "12-25\\n" is refused); the CLI
passes empty ``--tz`` / ``--queue`` values on, to be refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_fork_scheduler import ConfigError, Manager, every
from celery_fork_scheduler.cli import schedule as schedule_cli
from celery_fork_scheduler.errors import ScheduleError
from celery_fork_scheduler.testing import FakeClock

UTC = timezone.utc
START = "2026-12-01T00:00:00+00:00"


def make_app(redis_url: str, beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Celery:
    app = Celery("round38", set_as_current=False, broker=redis_url)
    app.conf.update(timezone="UTC", beat_schedule=beat_schedule or {}, result_expires=None, **conf)
    return app


def run_cli(app: Celery, *args: str) -> Result:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(schedule_cli, list(args), obj=obj)


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = make_app(redis_url)
    yield app
    app.close()


@pytest.fixture
def manager(app: Celery) -> Manager:
    return Manager(app, clock=FakeClock(START))


def test_a_runtime_entrys_exclusions_keep_its_own_timezone_once_stored(manager: Manager) -> None:
    """docs/schedules.md, exclusion dates: "A slot is excluded when its date **in the entry's
    time zone** (its `timezone` key, else the app's `timezone`) matches an item", and runtime
    entries take `exclude` like `beat_schedule` entries.

    `Manager.add(..., timezone="Asia/Tokyo", exclude=["2026-12-25"])` with `30 8 * * *`: the
    slot 2026-12-24T23:30Z is 08:30 on 12-25 in Tokyo, so it must be excluded, and the slot
    2026-12-25T23:30Z (12-26 in Tokyo) must not be. The stored form (`stored_fields`,
    entry.py) keeps the zone only inside the schedule dict and drops the entry's `timezone`
    key, so every replica (and the Manager) rebuilding the entry (`entry_from_dict`) reads the
    exclusion dates in the app's zone (UTC): the Christmas slot in Tokyo fires and the slot of
    the 26th is skipped instead.
    """
    manager.add(
        "tokyo-report",
        "proj.report",
        "30 8 * * *",
        timezone="Asia/Tokyo",
        exclude=["2026-12-25"],
    )
    christmas_in_tokyo = datetime(2026, 12, 24, 23, 30, tzinfo=UTC)
    boxing_day_in_tokyo = datetime(2026, 12, 25, 23, 30, tzinfo=UTC)
    assert manager.next_runs("tokyo-report", 1, after=datetime(2026, 12, 24, tzinfo=UTC)) == [
        christmas_in_tokyo
    ]
    excluded = manager.excluded_runs("tokyo-report", [christmas_in_tokyo, boxing_day_in_tokyo])
    assert excluded == [christmas_in_tokyo], (
        f"excluded {excluded}: the dates were read in UTC, not in the entry's zone Asia/Tokyo"
    )


def test_update_of_the_schedule_keeps_the_entrys_own_timezone(manager: Manager) -> None:
    """docs/manager.md, `add` and `update`: `manager.update(name, schedule=...)` changes
    "only these fields"; docs/schedules.md: the entry's `timezone` key "overrides everything".

    An entry added with `timezone="America/New_York"` and `0 9 * * *` fires at 14:00Z in
    January. `update(name, schedule="0 10 * * *")` must give 10:00 New York (15:00Z). The
    stored form has no `timezone` key (`stored_fields`, entry.py), and `_changed`
    (manager.py) rebuilds the entry from it plus the change: the new cron string is read in
    the app's zone (UTC) and fires at 10:00Z, five hours early, the entry's zone silently lost.
    """
    manager.add("ny-open", "proj.open", "0 9 * * *", timezone="America/New_York")
    after = datetime(2027, 1, 4, tzinfo=UTC)
    assert manager.next_runs("ny-open", 1, after=after) == [datetime(2027, 1, 4, 14, tzinfo=UTC)]
    manager.update("ny-open", schedule="0 10 * * *")
    assert manager.next_runs("ny-open", 1, after=after) == [datetime(2027, 1, 4, 15, tzinfo=UTC)], (
        "the updated cron string was read in UTC: the entry's timezone key was dropped"
    )


# -- an interval anchored near the end of time -------------------------------------------------

#: every 5 minutes from 9999-12-31 23:50 UTC, shifted by a day: its first slot is past the
#: last instant a ``datetime`` holds. (The builder form,
#: ``every(5).minutes.starting(...).offset(days=1)``, now raises ScheduleError where it is
#: written: see the last test of this group.)
BEYOND_THE_END = {
    "type": "interval",
    "every": 300,
    "offset": 86400,
    "start": "9999-12-31T23:50:00+00:00",
}


def test_an_interval_whose_anchor_plus_offset_overflows_is_a_config_error(
    manager: Manager,
) -> None:
    """docs/manager.md: "a bad schedule ... is a `ConfigError` naming the entry and the field,
    raised before anything is written"; docs/schedules.md: a mistake "stops beat at start-up with
    a message that names the entry".

    `every(5).minutes.starting(9999-12-31 23:50Z).offset(days=1)` can never fire (its anchor
    plus offset is past year 9999). `Manager.add` raises a bare `OverflowError('date value out
    of range')` instead: `Interval._base` (schedules/interval.py) computes `start + phase`
    outside the `try` that guards `next_slot`/`previous_slot` against overflow, so
    `validate()` blows up rather than answering "never fires". (The monthly variant past 9999
    was fixed in an earlier round; this is the interval one.)
    """
    with pytest.raises(ConfigError) as caught:
        manager.add("late", "proj.late", BEYOND_THE_END)
    assert (caught.value.entry, caught.value.field) == ("late", "schedule")
    assert manager.jobs() == []


def test_manager_check_reports_an_interval_anchored_past_the_end_of_time(
    redis_url: str,
) -> None:
    """docs/manager.md: `check()` "returns every problem ... it never raises for a bad
    definition".

    With `BEYOND_THE_END` in `beat_schedule`, `Manager.check()` raises the `OverflowError` of
    `Interval._base` (schedules/interval.py) instead of returning a problem for entry 'late',
    field 'schedule' (beat's start-up fails the same way, with a traceback, not a ConfigError).
    """
    app = make_app(redis_url, {"late": {"task": "proj.late", "schedule": BEYOND_THE_END}})
    try:
        problems = Manager(app).check()
        assert any(p.entry == "late" and p.field == "schedule" for p in problems), problems
    except OverflowError as exc:
        pytest.fail(f"Manager.check() raised {exc!r} instead of returning the problem")
    finally:
        app.close()


def test_cli_validate_names_the_entry_whose_interval_overflows(redis_url: str) -> None:
    """docs/cli.md: `validate` exits 1 listing the problems; a mistake is "one line on stderr,
    with no stack trace". With `BEYOND_THE_END` in `beat_schedule` the command dies of the
    `OverflowError` of `Interval._base` (CliRunner records it; a shell gets a traceback)."""
    app = make_app(redis_url, {"late": {"task": "proj.late", "schedule": BEYOND_THE_END}})
    try:
        result = run_cli(app, "validate")
    finally:
        app.close()
    assert not isinstance(result.exception, OverflowError), (
        f"validate crashed: {result.exception!r}"
    )
    assert result.exit_code == 1
    assert "late" in result.output and "Traceback" not in result.output


def test_the_builder_refuses_an_anchor_plus_offset_past_the_end_of_time() -> None:
    """Fixed with round 38: the schedule object itself refuses a first slot no ``datetime``
    holds (a ScheduleError naming start and offset, where the schedule is written)."""
    with pytest.raises(ScheduleError, match="outside the years 1-9999"):
        every(5).minutes.starting(datetime(9999, 12, 31, 23, 50, tzinfo=UTC)).offset(days=1)


def test_a_zone_without_an_iana_key_is_refused_or_kept_not_dropped_when_stored(
    manager: Manager,
) -> None:
    """docs/manager.md: "The `Job` that `add` and `update` return has the `next_run` the
    replicas will keep"; docs/schedules.md: "Zones are IANA names ... an unknown zone is an
    error at load time"; a refused call writes nothing, an accepted one is stored as given.

    `cron("0 9 * * *", tz=ZoneInfo.from_file(<America/New_York>))` is a `ZoneInfo` without a
    `key`. `to_zone` (schedules/base.py) takes any `ZoneInfo` as it is, so `Manager.add`
    accepts it and answers `next_run` 14:00Z (9:00 in New York, described `... in None`);
    but `to_dict` stores `"tz": None` (`_zone_name`), so every replica reloads the entry in the
    app's zone and fires at 09:00Z, five hours earlier than `add` answered.
    """
    from zoneinfo import ZoneInfo

    from celery_fork_scheduler import cron

    path = Path("/usr/share/zoneinfo/America/New_York")
    if not path.exists():
        pytest.skip("no system zoneinfo files")
    with path.open("rb") as source:
        keyless = ZoneInfo.from_file(source)
    try:
        job = manager.add("ny", "proj.open", cron("0 9 * * *", tz=keyless))
    except (ConfigError, ScheduleError):
        return  # refused (fixed with round 38: where the schedule is written): fine
    after = datetime(2026, 12, 2, tzinfo=UTC)
    stored = manager.next_runs("ny", 1, after=after)
    assert job.next_run == datetime(2026, 12, 1, 14, tzinfo=UTC)
    assert stored == [datetime(2026, 12, 2, 14, tzinfo=UTC)], (
        f"add answered 14:00Z, the stored entry fires at {stored}: its zone was not stored"
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [("--tz", ""), ("--queue", "")],
    ids=["empty-tz", "empty-queue"],
)
def test_cli_add_refuses_an_empty_option_value(app: Celery, option: str, value: str) -> None:
    """docs/cli.md: exit 2 for "bad input: an invalid schedule or definition"; the Manager
    refuses `timezone=""` ("must be an IANA zone name") and docs/schedules.md says `queue` must
    be "a queue name (non-empty string)"; `celery schedule next --tz ''` is refused too.

    `celery schedule add x tasks.t 'daily at 09:00' --tz ''` (e.g. `--tz "$ZONE"` with the
    variable unset) exits 0 and stores the entry in the app's zone; `--queue ''` exits 0 and
    the entry goes to the default queue. `add` (cli/edit.py) tests `if zone:` / `if queue:`,
    so an empty value is silently dropped instead of being passed on and refused.
    """
    result = run_cli(app, "add", "x", "proj.t", "daily at 09:00", option, value)
    assert result.exit_code == 2, (
        f"exit {result.exit_code}: {result.output.strip()!r}; stored: "
        f"{[job.name for job in Manager(app).jobs()]}"
    )


# -- a yearly exclusion date with a trailing newline ----------------------------------------------


def test_a_yearly_exclusion_with_a_trailing_newline_is_a_config_error(manager: Manager) -> None:
    """docs/schedules.md, exclusion dates: "A bad item stops beat at start-up with a
    `ConfigError` naming the entry, the field `exclude` and the item"; docs/manager.md: a bad
    definition is a `ConfigError` naming the entry and the field, before anything is written.

    `exclude=["12-25\\n"]` (a line read from a file of holidays): `_normalise`
    (exclusions.py) matches it with `^(\\d{2})-(\\d{2})$`, whose `$` also matches before a
    final newline, and keeps the item as given; `compile_exclusions` then takes it (6
    characters) for a full date and `date.fromisoformat` raises a bare `ValueError('Invalid
    isoformat string')` out of `Manager.add` (and out of beat's start-up, or of every entry
    naming a calendar that holds it).
    """
    with pytest.raises(ConfigError) as caught:
        manager.add("xmas", "proj.report", "@daily", exclude=["12-25\n"])
    assert (caught.value.entry, caught.value.field) == ("xmas", "exclude")


def test_a_calendar_with_a_yearly_date_and_a_trailing_newline_is_refused_as_a_setting(
    redis_url: str,
) -> None:
    """docs/settings.md / schedules.md: `fork_scheduler_calendars` is checked when the settings
    are read, a bad item being a `ConfigError` naming the setting; `Manager.check()` "never
    raises for a bad definition".

    `fork_scheduler_calendars = {"holidays": ["12-25\\n"]}` passes `calendars_from_setting`
    (the yearly regex accepts the newline, exclusions.py) and every entry naming the calendar
    then fails with a bare `ValueError` when it is compiled: `Manager.check()` raises it.
    """
    app = make_app(
        redis_url,
        {"daily": {"task": "proj.report", "schedule": "@daily", "calendar": "holidays"}},
        fork_scheduler_calendars={"holidays": ["12-25\n"]},
    )
    try:
        problems = Manager(app).check()
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        pytest.fail(f"Manager.check() raised {exc!r}")
    finally:
        app.close()
    assert any(p.field == "fork_scheduler_calendars" or p.entry == "daily" for p in problems)


def test_add_many_names_every_bad_definition_when_one_has_a_yearly_date_with_a_newline(
    manager: Manager,
) -> None:
    """docs/manager.md, bulk changes: "Any problem raises one `BulkConfigError` (a
    `ConfigError`) whose `.errors` hold every problem, each a `ConfigError` naming the entry
    and the field ... Nothing is written then."

    `add_many([good, {"schedule": "every 0 minutes"}, {"exclude": ["12-25\\n"]}])`: instead
    of one `BulkConfigError` naming `bad-count` and `bad-date`, the bare `ValueError` of
    `compile_exclusions` (exclusions.py, see above) escapes from the check of the third
    definition, and the error of the second is never reported. (Nothing is written.)
    """
    from celery_fork_scheduler.manager import BulkConfigError

    with pytest.raises(BulkConfigError) as caught:
        manager.add_many(
            [
                {"name": "good", "task": "proj.t", "schedule": "every 5 minutes"},
                {"name": "bad-count", "task": "proj.t", "schedule": "every 0 minutes"},
                {"name": "bad-date", "task": "proj.t", "schedule": "@daily",
                 "exclude": ["12-25\n"]},
            ]
        )  # fmt: skip
    named = {(error.entry, error.field) for error in caught.value.errors}
    assert named == {("bad-count", "schedule"), ("bad-date", "exclude")}
    assert manager.jobs() == []


def test_cli_add_with_a_yearly_exclusion_ending_in_a_newline_prints_no_traceback(
    redis_url: str, tmp_path: Any
) -> None:
    """docs/cli.md: "a mistake is one line on stderr, with no stack trace", exit 2 for "an
    invalid schedule or definition".

    Run as the docs run it (`celery -A proj schedule add ...` in a subprocess), with
    `--exclude "12-25<newline>"` (a value pasted or read with its line end): the bare
    `ValueError` of `compile_exclusions` (exclusions.py) is not a `ConfigError`, so the
    command dies with a Python traceback and exit 1.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "proj38.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('proj38', broker={redis_url!r})\n"
        "app.conf.update(timezone='UTC', result_expires=None)\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root])}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj38", "schedule", "add", "xmas",
         "proj.report", "@daily", "--exclude", "12-25\n"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 2, (done.returncode, done.stderr[-300:])
