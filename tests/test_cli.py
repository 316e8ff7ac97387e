"""``celery schedule ...`` driven with click's CliRunner against a real Redis."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from app_helpers import two_task_app
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_fork_scheduler import Manager
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.outages import LISTED_ENTRIES, Outage

KEYS = Keys("scheduler:")

Run = Callable[..., Result]


def make_app(broker: str, **conf: Any) -> Celery:
    """An app with two tasks and three static entries (one a singleton)."""
    return two_task_app("cli_test", broker, nightly={"singleton": True}, **conf)


@pytest.fixture
def app(redis_url: str) -> Celery:
    return make_app(redis_url)


def runner_for(app: Celery, *, no_color: bool = True) -> Run:
    def run(*args: str, input: str | None = None, color: bool = False) -> Result:
        obj = CLIContext(app=app, no_color=no_color, workdir=None)
        return CliRunner().invoke(schedule, list(args), obj=obj, input=input, color=color)

    return run


@pytest.fixture
def run(app: Celery) -> Run:
    return runner_for(app)


def assert_one_line_error(result: Result, code: int, match: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert match in lines[0]
    assert "Traceback" not in result.output


# -- list ------------------------------------------------------------------------------------


def test_list_shows_static_and_runtime_entries_in_a_table(app: Celery, run: Run) -> None:
    Manager(app).add("hello", "tasks.cleanup", "every 10 seconds", tags=["demo"])
    result = run("list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "NAME", "SCHEDULE", "TZ", "TAGS", "NEXT", "RUN", "LAST", "RUN", "RUNS", "STATE", "SOURCE"
    ]  # fmt: skip
    assert [row.split()[0] for row in rows] == ["cleanup", "hello", "nightly"]
    nightly = rows[2]
    assert "daily at 02:00 in Europe/Berlin" in nightly
    assert "02:00:00 CE" in nightly  # next run in the entry's own zone (CET or CEST)
    assert nightly.split()[-2:] == ["active", "config"]
    assert rows[1].split()[-2:] == ["active", "runtime"]
    assert "\x1b[" not in result.stdout


def test_list_json_parses_back_with_every_field(app: Celery, run: Run) -> None:
    Manager(app).pause("cleanup", note="disk migration")
    result = run("list", "--json")
    assert result.exit_code == 0
    jobs = {job["name"]: job for job in json.loads(result.stdout)}
    assert set(jobs) == {"cleanup", "nightly"}
    cleanup = jobs["cleanup"]
    assert cleanup["schedule"] == "every 5 minutes"
    assert cleanup["paused"] is True
    assert cleanup["pause_note"] == "disk migration"
    assert cleanup["static"] is True
    assert cleanup["tags"] == ["ops"]
    next_run = datetime.fromisoformat(cleanup["next_run"])
    assert next_run.minute % 5 == 0 and next_run.second == 0
    nightly = jobs["nightly"]
    assert nightly["timezone"] == "Europe/Berlin"
    assert nightly["singleton"] is True
    assert datetime.fromisoformat(nightly["next_run_local"]).hour == 2


def test_list_filters_by_tag_and_by_paused(app: Celery, run: Run) -> None:
    Manager(app).pause("nightly")
    by_tag = json.loads(run("list", "--tag", "ops", "--json").stdout)
    paused = json.loads(run("list", "--paused", "--json").stdout)
    assert [job["name"] for job in by_tag] == ["cleanup"]
    assert [job["name"] for job in paused] == ["nightly"]
    assert run("list", "--tag", "nothing").stdout.strip() == "no entries"


def test_tables_are_coloured_only_on_a_terminal(app: Celery) -> None:
    run = runner_for(app, no_color=False)
    assert "\x1b[" in run("list", color=True).stdout
    assert "\x1b[" not in run("list").stdout


# -- show, history --------------------------------------------------------------------------


def test_show_prints_definition_next_slots_and_no_history_yet(run: Run) -> None:
    result = run("show", "nightly")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "task         tasks.report" in out
    assert "overlap      skip (singleton)" in out
    assert "description  the nightly PDF" in out
    assert "next 10 runs" in out
    assert out.count("02:00:00 CE") == 10
    assert "runs 0  completed 0  errors 0  failures 0" in out
    assert "no history yet" in out


def test_show_json_has_slots_counters_and_history(
    app: Celery, run: Run, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.state("cleanup"), mapping={"runs": 3, "completed": 2, "skips:busy": 1})
    redis_client.lpush(
        KEYS.history("cleanup"),
        json.dumps({"slot": 1_767_225_600_000_000, "outcome": "sent", "task_id": "t1"}),
    )
    data = json.loads(run("show", "cleanup", "-n", "3", "--json").stdout)
    assert len(data["next_runs"]) == 3
    assert data["counters"] == {
        "runs": 3, "completed": 2, "errors": 0, "failures": 0, "skips:busy": 1
    }  # fmt: skip
    assert data["history"] == [
        {"slot": "2026-01-01T00:00:00+00:00", "outcome": "sent", "task_id": "t1"}
    ]


def test_show_prints_when_an_entry_may_fire_and_how_it_catches_up(app: Celery, run: Run) -> None:
    Manager(app).add(
        "limited",
        "tasks.cleanup",
        "every 10 seconds",
        start_at="2030-04-01T00:00:00+00:00",
        max_runs=3,
        catchup="all",
        catchup_window=3600,
    )
    out = run("show", "limited").stdout
    assert "starts       2030-04-01 00:00:00 UTC" in out
    assert "ends         -" in out
    assert "max runs     3" in out
    assert "catchup      all (window 1h)" in out
    data = json.loads(run("show", "limited", "--json").stdout)
    assert {key: data[key] for key in ("start_at", "end_at", "max_runs", "catchup")} == {
        "start_at": "2030-04-01T00:00:00+00:00",
        "end_at": None,
        "max_runs": 3,
        "catchup": "all",
    }
    assert data["catchup_window_seconds"] == 3600
    assert "catchup      latest" in run("show", "cleanup").stdout


def test_show_and_list_print_an_entry_jitter(app: Celery, run: Run) -> None:
    Manager(app).add("spread", "tasks.cleanup", "every 10 seconds", jitter="2.5s")
    assert "jitter       2.5 s" in run("show", "spread").stdout
    assert "jitter       default (fork_scheduler_default_jitter)" in run("show", "cleanup").stdout
    assert "every 10 seconds (jitter 2.5 s)" in run("list").stdout
    listed = {job["name"]: job for job in json.loads(run("list", "--json").stdout)}
    assert listed["spread"]["jitter_seconds"] == 2.5
    assert listed["cleanup"]["jitter_seconds"] is None
    assert json.loads(run("show", "spread", "--json").stdout)["jitter_seconds"] == 2.5


def test_add_takes_a_jitter_and_an_overlap_policy(app: Celery, run: Run) -> None:
    result = run("add", "spread", "tasks.cleanup", "every 1 minute", "--jitter", "30")
    assert result.exit_code == 0, result.output
    result = run(
        "add",
        "queued",
        "tasks.cleanup",
        "every 1 minute",
        "--jitter",
        "2 minutes",
        "--overlap",
        "buffer_all",
    )
    assert_one_line_error(result, 2, "field 'jitter'")  # more than the period
    result = run("add", "queued", "tasks.cleanup", "every 1 minute", "--overlap", "buffer_all")
    assert result.exit_code == 0, result.output
    manager = Manager(app)
    assert manager.get("spread").jitter == timedelta(seconds=30)
    assert manager.get("queued").overlap == "buffer_all"
    assert (
        run("add", "x", "tasks.cleanup", "every 1 minute", "--overlap", "sometimes").exit_code == 2
    )


def test_show_of_an_unknown_entry_is_one_line_and_exit_1(run: Run) -> None:
    assert_one_line_error(run("show", "nope"), 1, "no entry named 'nope'")


def test_history_lists_runs_newest_first(run: Run, redis_client: redis.Redis) -> None:
    assert run("history", "cleanup").stdout.strip() == "no history yet"
    for minute, outcome in ((0, "sent"), (5, "completed"), (10, "skipped:paused")):
        slot = datetime(2026, 1, 1, 0, minute, tzinfo=timezone.utc)
        item = {"slot": int(slot.timestamp() * 1_000_000), "outcome": outcome, "task_id": "t"}
        redis_client.lpush(KEYS.history("cleanup"), json.dumps(item))
    redis_client.lpush(KEYS.history("cleanup"), b"not json")
    result = run("history", "cleanup", "-n", "3")
    assert result.exit_code == 0
    rows = result.stdout.splitlines()[1:]
    assert "not json" in rows[0]
    assert "00:10:00" in rows[1] and "skipped:paused" in rows[1]
    assert "00:05:00" in rows[2] and "completed" in rows[2]
    items = json.loads(run("history", "cleanup", "--json").stdout)
    assert [item.get("outcome") for item in items] == [
        None, "skipped:paused", "completed", "sent"
    ]  # fmt: skip


def test_history_outages_lists_kept_summaries_and_skips_damaged_ones(
    run: Run, redis_client: redis.Redis
) -> None:
    assert run("history", "--outages").stdout.strip() == "no outage kept"
    started = datetime(2026, 1, 1, 0, 0, tzinfo=timezone.utc)
    names = tuple(f"entry-{i:02}" for i in range(LISTED_ENTRIES))
    outage = Outage("vm:1:ab", started, started + timedelta(minutes=4), 250, 30, names)
    redis_client.lpush(KEYS.outages, outage.encode(), b'{"replica": "half a record"}')
    shown = json.loads(run("history", "--outages", "--json").stdout)
    assert shown == [outage.to_dict()]  # the damaged item is left out, never an error
    table = run("history", "--outages").stdout.splitlines()
    assert table[0].split() == ["STARTED", "LASTED", "MISSED", "ENTRIES", "REPLICA"]
    assert "4m" in table[1] and "250 slots of 30 entries" in table[1] and "(+10)" in table[1]


@pytest.mark.parametrize("args", [[], ["cleanup", "--outages"]])
def test_history_takes_a_name_or_outages(run: Run, args: list[str]) -> None:
    assert_one_line_error(run("history", *args), 2, "give an entry NAME, or --outages")


# -- next ------------------------------------------------------------------------------------


def test_next_previews_slots_without_redis() -> None:
    run = runner_for(make_app("memory://"))
    result = run("next", "*/15 9-17 * * mon-fri", "-n", "3", "--tz", "America/New_York", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["timezone"] == "America/New_York"
    slots = [datetime.fromisoformat(slot["local"]) for slot in data["slots"]]
    assert len(slots) == 3
    assert all(slot.minute % 15 == 0 and 9 <= slot.hour <= 17 for slot in slots)
    assert all(slot.weekday() < 5 for slot in slots)
    text = run("next", "every 90 seconds", "-n", "2").stdout.splitlines()
    assert text[0].startswith("every 90 seconds")
    assert len(text) == 3


@pytest.mark.parametrize(
    ("expression", "match"),
    [
        pytest.param("0 0 30 2 *", "never fires", id="impossible-date"),
        pytest.param("every 5 minuets", "unknown unit 'minuets'", id="typo"),
        pytest.param("daily at 25:00", "cannot parse schedule", id="bad-time"),
    ],
)
def test_next_rejects_a_bad_expression_with_exit_2(expression: str, match: str) -> None:
    run = runner_for(make_app("memory://"))
    assert_one_line_error(run("next", expression), 2, match)


def test_next_rejects_an_unknown_zone(run: Run) -> None:
    assert_one_line_error(run("next", "@daily", "--tz", "Mars/Olympus"), 2, "Mars/Olympus")


# -- add, remove ------------------------------------------------------------------------------


def test_add_stores_a_runtime_entry_every_replica_sees(app: Celery, run: Run) -> None:
    result = run(
        "add", "hello", "tasks.report", "every 10 seconds",
        "--kwargs", '{"day": "monday"}', "--tag", "a", "--tag", "b",
        "--singleton", "--queue", "fast", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "hello"
    job = Manager(app).get("hello")
    assert job.source == "runtime"
    assert job.tags == {"a", "b"}
    assert job.overlap == "skip"
    assert job.options == {"queue": "fast"}
    assert job.kwargs == {"day": "monday"}
    assert result.stderr == ""


def test_add_warns_about_an_unknown_task(run: Run) -> None:
    result = run("add", "x", "tasks.nope", "@daily")
    assert result.exit_code == 0
    assert "task 'tasks.nope' is not registered" in result.stderr


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param(["x", "tasks.cleanup", "every 3 fortnights"], "fortnights", id="schedule"),
        pytest.param(["x", "tasks.cleanup", "@daily", "--args", "{"], "not valid JSON", id="json"),
        pytest.param(["x", "tasks.cleanup", "@daily", "--args", "{}"], "JSON array", id="array"),
        pytest.param(["cleanup", "tasks.cleanup", "@daily"], "static entry", id="static-name"),
        pytest.param(["x", "tasks.cleanup"], "Missing argument 'SCHEDULE'", id="usage"),
    ],
)
def test_add_rejects_bad_input_with_exit_2(run: Run, args: list[str], match: str) -> None:
    assert_one_line_error(run("add", *args), 2, match)


def test_add_twice_needs_replace(app: Celery, run: Run) -> None:
    assert run("add", "x", "tasks.cleanup", "@daily").exit_code == 0
    assert_one_line_error(run("add", "x", "tasks.cleanup", "@hourly"), 2, "replace")
    assert run("add", "x", "tasks.cleanup", "@hourly", "--replace").exit_code == 0
    assert Manager(app).get("x").schedule_text.startswith("cron @hourly")


def test_remove_by_name(app: Celery, run: Run) -> None:
    Manager(app).add("x", "tasks.cleanup", "@daily")
    result = run("remove", "x", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"removed": ["x"]}
    assert_one_line_error(run("remove", "x"), 1, "no entry named 'x'")
    assert_one_line_error(run("remove", "cleanup"), 2, "cannot be removed")


def test_remove_by_tag_asks_for_confirmation(app: Celery, run: Run) -> None:
    manager = Manager(app)
    manager.add("a", "tasks.cleanup", "@daily", tags=["ops"])
    manager.add("b", "tasks.cleanup", "@daily", tags=["ops"])
    refused = run("remove", "--tag", "ops", input="n\n")
    assert refused.exit_code == 1
    assert "Remove 2 runtime entries tagged 'ops' (a, b)?" in refused.stderr
    assert {job.name for job in manager.jobs("ops")} == {"a", "b", "cleanup"}
    accepted = run("remove", "--tag", "ops", input="y\n")
    assert accepted.exit_code == 0
    assert "removed 2 entries tagged 'ops': a, b" in accepted.stdout
    assert "static entries stay" in accepted.stderr
    assert [job.name for job in manager.jobs("ops")] == ["cleanup"]


def test_remove_by_tag_with_yes_does_not_ask(app: Celery, run: Run) -> None:
    Manager(app).add("a", "tasks.cleanup", "@daily", tags=["tmp"])
    result = run("remove", "--tag", "tmp", "--yes", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"removed": ["a"], "kept_static": []}
    assert result.stderr == ""


def test_remove_needs_a_name_or_a_tag(run: Run) -> None:
    assert_one_line_error(run("remove"), 2, "either a NAME or --tag")
    assert_one_line_error(run("remove", "x", "--tag", "t"), 2, "either a NAME or --tag")
    assert_one_line_error(run("remove", "--tag", "nothing", "--yes"), 1, "no runtime entries")
    assert_one_line_error(run("remove", "--tag", "ops", "--yes"), 1, "pause them: cleanup")


# -- pause, resume, trigger ------------------------------------------------------------------


def test_pause_and_resume_by_name(app: Celery, run: Run) -> None:
    manager = Manager(app)
    result = run("pause", "cleanup", "--note", "disk migration")
    assert (result.exit_code, result.stdout.strip()) == (0, "paused 'cleanup'")
    state = manager.is_paused("cleanup")
    assert (state.paused, state.note) == (True, "disk migration")
    assert "state        paused since " in run("show", "cleanup").stdout
    assert ": disk migration" in run("show", "cleanup").stdout
    assert json.loads(run("resume", "cleanup", "--json").stdout) == {"resumed": ["cleanup"]}
    assert manager.is_paused("cleanup").paused is False


def test_pause_by_tag_confirms_unless_yes(app: Celery, run: Run) -> None:
    refused = run("pause", "--tag", "reports", input="n\n")
    assert refused.exit_code == 1
    assert Manager(app).is_paused("nightly").paused is False
    result = run("pause", "--tag", "reports", "--yes", "--json")
    assert json.loads(result.stdout) == {"paused": ["nightly"]}
    assert Manager(app).is_paused("nightly").paused is True
    assert run("resume", "--tag", "reports").stdout.strip() == (
        "resumed 1 entry tagged 'reports': nightly"
    )


def test_pause_of_an_unknown_entry_is_exit_1(run: Run) -> None:
    assert_one_line_error(run("pause", "nope"), 1, "no entry named 'nope'")


def test_trigger_prints_the_task_id_and_skips_a_running_singleton(
    run: Run, redis_client: redis.Redis
) -> None:
    first = run("trigger", "nightly", "--json")
    assert first.exit_code == 0, first.output
    task_id = json.loads(first.stdout)["task_id"]
    assert task_id
    assert redis_client.llen("celery") == 1
    again = run("trigger", "nightly")
    assert (again.exit_code, again.stdout.strip()) == (0, "skipped: still running")
    assert redis_client.llen("celery") == 1
    skipped = json.loads(run("trigger", "nightly", "--json").stdout)
    assert (skipped["task_id"], skipped["skipped"], skipped["reason"]) == (None, True, "busy")


def test_trigger_says_when_the_concurrency_cap_is_reached(
    redis_url: str, redis_client: redis.Redis
) -> None:
    run = runner_for(make_app(redis_url, fork_scheduler_max_concurrent=1))
    assert run("trigger", "cleanup").exit_code == 0
    again = run("trigger", "cleanup")
    assert (again.exit_code, again.stdout.strip()) == (0, "skipped: concurrency cap reached")
    assert redis_client.llen("celery") == 1


def test_trigger_with_args_that_do_not_fit_the_task_is_one_line(app: Celery, run: Run) -> None:
    Manager(app).add("bad-args", "tasks.cleanup", "@daily", args=[1, 2])
    assert_one_line_error(run("trigger", "bad-args"), 2, "takes 0 positional arguments")


# -- replicas --------------------------------------------------------------------------------


def test_replicas_shows_recent_ones_and_hides_old_records(
    run: Run, redis_client: redis.Redis
) -> None:
    now = datetime.now(timezone.utc)

    def record(seconds_ago: float) -> str:
        tick = (now - timedelta(seconds=seconds_ago)).isoformat()
        return json.dumps(
            {"hostname": "h", "pid": 1, "last_tick": tick, "runtime_version": 4, "entries": 2}
        )

    redis_client.hset(
        KEYS.replicas, mapping={"h:1:a": record(2), "h:2:b": record(30), "h:3:c": record(3600)}
    )
    result = run("replicas")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["REPLICA", "LAST", "TICK", "AGE", "VERSION", "ENTRIES", "STATUS"]
    assert lines[1].startswith("h:1:a") and lines[1].endswith("live")
    assert lines[2].startswith("h:2:b") and lines[2].endswith("stale")
    assert "1 older record hidden (see --within)" in result.stdout
    data = json.loads(run("replicas", "--within", "7200", "--json").stdout)
    assert [r["id"] for r in data["replicas"]] == ["h:1:a", "h:2:b", "h:3:c"]
    assert data["replicas"][0]["runtime_version"] == 4


def test_replicas_without_any(run: Run) -> None:
    assert "no beat replica ticked" in run("replicas").stdout


# -- Redis problems ---------------------------------------------------------------------------


def test_unreachable_redis_is_one_line_with_the_password_masked() -> None:
    run = runner_for(make_app("redis://:hunter2@127.0.0.1:1/0"))
    result = run("list")
    assert_one_line_error(result, 3, "cannot reach Redis at redis://:**@127.0.0.1:1/0")
    assert "hunter2" not in result.output


def test_without_redis_static_entries_list_but_pause_needs_redis() -> None:
    run = runner_for(make_app("memory://"))
    assert run("list").exit_code == 0
    assert_one_line_error(run("pause", "cleanup"), 3, "needs Redis")


# -- validate: rendering and exit codes (the kinds of problem: tests/test_validation.py) ------


@pytest.fixture
def validate(redis_url: str, redis_client: redis.Redis) -> Callable[..., Result]:
    redis_client.set(KEYS.workers_seen, "1")

    def check(*args: str, broker: str = redis_url, **conf: Any) -> Result:
        return runner_for(make_app(broker, **conf))("validate", *args)

    return check


def test_validate_passes_a_good_schedule(validate: Callable[..., Result]) -> None:
    result = validate()
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "2 valid entries, 0 errors, 0 warnings"


def test_validate_prints_each_error_and_exits_1(validate: Callable[..., Result]) -> None:
    bad = {
        "bad": {"task": "tasks.cleanup", "schedule": "0 0 30 2 *"},
        "ghost": {"task": "tasks.missing", "schedule": "@daily"},
    }
    result = validate(extra_entries=bad)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "error: entry 'bad', field 'schedule': cron '0 0 30 2 *' never fires (no matching date)",
        "error: entry 'ghost': unknown task 'tasks.missing' "
        "(not registered in the app after importing its modules)",
        "2 valid entries, 2 errors, 0 warnings",
    ]


def test_validate_reports_unreachable_redis_with_the_password_masked(
    validate: Callable[..., Result],
) -> None:
    result = validate(broker="redis://:hunter2@127.0.0.1:1/0")
    assert result.exit_code == 1
    assert "error: cannot reach Redis at redis://:**@127.0.0.1:1/0" in result.stdout
    assert "hunter2" not in result.output


def test_validate_json_lists_errors_and_warnings_apart(
    validate: Callable[..., Result], redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.runtime_entries, "corrupt", "{not json")
    redis_client.hset(KEYS.runtime_entries, "old", json.dumps({"schema": 99}))
    redis_client.delete(KEYS.workers_seen)
    result = validate("--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["ok"], data["entries"]) == (False, 2)
    assert {(e["level"], e["entry"], e["source"]) for e in data["errors"]} == {
        ("error", "corrupt", "runtime"),
        ("error", "old", "runtime"),
    }
    [warning] = data["warnings"]
    assert set(warning) == {"level", "message", "entry", "field", "source"}
    assert warning["level"] == "warning"


def test_validate_fails_on_warnings_only_when_strict(
    validate: Callable[..., Result], redis_client: redis.Redis
) -> None:
    redis_client.delete(KEYS.workers_seen)
    result = validate()
    assert result.exit_code == 0
    assert "warning: singleton entries exist but no worker announced" in result.stdout
    assert result.stdout.splitlines()[-1] == "2 valid entries, 0 errors, 1 warning"
    assert validate("--strict").exit_code == 1


def test_validate_warns_without_redis(validate: Callable[..., Result]) -> None:
    result = validate(broker="memory://")
    assert result.exit_code == 0
    assert "warning: no Redis configured" in result.stdout


# -- the celery entry point --------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"cli_project_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from celery import Celery

            app = Celery("{name}", broker={redis_url!r})
            app.conf.beat_schedule = {{
                "tick": {{"task": "{name}.tick", "schedule": "every 10 seconds"}},
            }}

            @app.task
            def tick(): ...
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name


def test_celery_runs_the_schedule_sub_command_with_the_app_of_dash_a(project: str) -> None:
    from celery.bin.celery import celery

    result = CliRunner().invoke(celery, ["-A", project, "schedule", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert [job["name"] for job in json.loads(result.stdout)] == ["tick"]
