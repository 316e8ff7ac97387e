"""Regressions of the Manager, the CLI and entry validation, each against real redis-servers.

- ``trigger`` never sends a run it then reports as failed, and a broker that is down is one line;
- ``buffer_one`` entries whose message cannot be held back as JSON are refused at load;
- entry names that would break the Redis Cluster hash tags (or collide with a global key) are
  refused wherever an entry is defined;
- a runtime entry's promised first slot is computed from the instant the store records;
- entries that used up ``max_runs`` are shown as finished;
- corrupted stored records are one line naming the record, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from celery.signals import after_task_publish, before_task_publish
from click.testing import CliRunner, Result
from replica_helpers import store_raw

from celery_fork_scheduler import Manager, periodic
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.store import RuntimeStore
from celery_fork_scheduler.testing import FakeClock, RedisServer

UTC = timezone.utc
KEYS = Keys("scheduler:")
Run = Callable[..., Result]
#: A JSON array nested 990 deep: ``json.loads`` raises RecursionError inside a CLI command.
DEEP = "[" * 990 + "]" * 990


def make_app(broker: str, **conf: Any) -> Celery:
    """An app with one plain and one singleton static entry."""
    app = Celery("regressions", broker=broker, set_as_current=False)
    app.conf.update(timezone="UTC", **conf)

    @app.task(name="tasks.cleanup", shared=False)  # type: ignore[untyped-decorator]
    def cleanup() -> None: ...

    app.conf.beat_schedule = {
        "cleanup": {"task": "tasks.cleanup", "schedule": "every 5 minutes"},
        "single": {"task": "tasks.cleanup", "schedule": "every 5 minutes", "singleton": True},
    }
    return app


def runner_for(app: Celery) -> Run:
    def run(*args: str) -> Result:
        obj = CLIContext(app=app, no_color=True, workdir=None)
        return CliRunner().invoke(schedule, list(args), obj=obj)

    return run


def assert_one_line_error(result: Result, code: int, match: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert match in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def claims() -> Iterator[RedisServer]:
    """A second, private redis-server for the scheduler's keys (the broker stays up)."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def app(redis_url: str) -> Celery:
    return make_app(redis_url)


@pytest.fixture
def run(app: Celery) -> Run:
    return runner_for(app)


# -- 1. trigger: never a run sent and reported as failed ---------------------------------------


def test_trigger_with_the_claims_redis_down_sends_nothing_and_exits_3(
    redis_url: str, redis_client: redis.Redis, claims: RedisServer
) -> None:
    app = make_app(redis_url, fork_scheduler_redis_url=claims.url)
    claims.stop()
    result = runner_for(app)("trigger", "cleanup")
    assert_one_line_error(result, 3, "cannot reach Redis")
    assert "nothing was sent" in result.stderr
    assert redis_client.llen("celery") == 0


def test_manager_trigger_with_the_claims_redis_down_raises_before_sending(
    redis_url: str, redis_client: redis.Redis, claims: RedisServer
) -> None:
    manager = Manager(make_app(redis_url, fork_scheduler_redis_url=claims.url))
    claims.stop()
    with pytest.raises(redis.ConnectionError):
        manager.trigger("cleanup")
    assert redis_client.llen("celery") == 0


@pytest.fixture
def redis_dies_after_publish(claims: RedisServer) -> Iterator[None]:
    """Stop the claims redis-server right after the broker accepted a message."""

    def stop(**_: Any) -> None:
        claims.stop()

    after_task_publish.connect(stop, weak=False)
    yield
    after_task_publish.disconnect(stop)


@pytest.mark.usefixtures("redis_dies_after_publish")
def test_trigger_whose_run_cannot_be_recorded_after_the_send_succeeds_with_a_warning(
    redis_url: str, redis_client: redis.Redis, claims: RedisServer
) -> None:
    app = make_app(redis_url, fork_scheduler_redis_url=claims.url)
    result = runner_for(app)("trigger", "cleanup", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    assert data["task_id"] and data["skipped"] is False
    assert "not recorded" in data["warning"]
    assert "warning: sent, but the run was not recorded" in result.stderr
    assert redis_client.llen("celery") == 1


@pytest.mark.usefixtures("redis_dies_after_publish")
def test_manager_trigger_reports_what_it_could_not_record(
    redis_url: str, redis_client: redis.Redis, claims: RedisServer
) -> None:
    result = Manager(make_app(redis_url, fork_scheduler_redis_url=claims.url)).trigger("cleanup")
    assert result.task_id is not None
    assert result.unrecorded is not None and "Connection" in result.unrecorded
    assert redis_client.llen("celery") == 1


@pytest.mark.parametrize("name", ["cleanup", "single"])
def test_trigger_with_the_broker_down_is_one_line_exit_3_and_frees_the_singleton(
    redis_url: str, redis_client: redis.Redis, claims: RedisServer, name: str
) -> None:
    app = make_app(claims.url, fork_scheduler_redis_url=redis_url, fork_scheduler_max_concurrent=5)
    claims.stop()
    result = runner_for(app)("trigger", name)
    assert_one_line_error(result, 3, f"cannot send {name!r}: cannot reach the broker")
    assert redis_client.exists(KEYS.running(name)) == 0
    assert redis_client.zcard(KEYS.cap) == 0
    assert redis_client.hget(KEYS.state(name), "runs") is None


def test_trigger_whose_broker_is_lost_during_the_publish_says_the_run_may_be_sent(
    redis_url: str, redis_client: redis.Redis, claims: RedisServer
) -> None:
    app = make_app(claims.url, fork_scheduler_redis_url=redis_url)

    def stop(**_: Any) -> None:
        claims.stop()

    before_task_publish.connect(stop, weak=False)
    try:
        result = runner_for(app)("trigger", "single")
    finally:
        before_task_publish.disconnect(stop)
    assert_one_line_error(result, 3, "cannot reach the broker")
    assert "the run may have been sent (task id " in result.stderr
    # Given back at once: a run that did reach the broker takes its marker again when it
    # starts (or is not run if another run holds it), see docs/singleton.md.
    assert redis_client.exists(KEYS.running("single")) == 0


# -- 2. buffer_one messages must be JSON ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("args", [datetime(2026, 1, 1, tzinfo=UTC)]), ("kwargs", {"at": datetime(2026, 1, 1)})],
)
def test_a_buffer_one_entry_whose_args_are_not_json_is_refused_at_load(
    field: str, value: Any
) -> None:
    definition = {"task": "t", "schedule": "every 5 minutes", "overlap": "buffer_one", field: value}
    with pytest.raises(ConfigError) as refused:
        entry_from_config("held", definition, default_timezone=UTC)
    assert (refused.value.entry, refused.value.field) == ("held", field)
    assert "buffer_one" in str(refused.value)


def test_a_buffer_one_entry_with_non_json_options_is_refused_too() -> None:
    definition = {
        "task": "t",
        "schedule": "every 5 minutes",
        "overlap": "buffer_one",
        "options": {"expires": datetime(2027, 1, 1, tzinfo=UTC)},
    }
    with pytest.raises(ConfigError) as refused:
        entry_from_config("held", definition, default_timezone=UTC)
    assert refused.value.field == "options"


def test_a_buffer_one_entry_with_lazy_args_is_accepted_and_checked_at_publish() -> None:
    definition = {
        "task": "t",
        "schedule": "every 5 minutes",
        "overlap": "buffer_one",
        "args": lambda: [1],
    }
    assert entry_from_config("held", definition, default_timezone=UTC).overlap == "buffer_one"


def test_an_allow_entry_with_a_datetime_arg_is_still_accepted() -> None:
    definition = {"task": "t", "schedule": "every 5 minutes", "args": [datetime(2026, 1, 1)]}
    assert entry_from_config("x", definition, default_timezone=UTC).args


def test_a_buffer_one_periodic_task_with_a_datetime_kwarg_fails_at_import(redis_url: str) -> None:
    app = make_app(redis_url)
    with pytest.raises(ConfigError) as refused:
        periodic("every 5 minutes", overlap="buffer_one", kwargs={"at": datetime(2026, 1, 1)})(
            app.tasks["tasks.cleanup"]
        )
    assert refused.value.field == "kwargs"


# -- 3. names that break hash tags or collide with a global key --------------------------------

BAD_NAMES = ["}x", "a{b", "a}b", "{}", "cap"]
#: Names a static entry may have (Celery's add_periodic_task names one repr(signature)): its
#: keys' hash tag is then a digest of the name.
BRACED_NAMES = ["}x", "a{b", "a}b", "{}", "proj.sync({'tenant': 'acme'})", "x" * 300]


def test_a_config_entry_name_that_would_be_a_global_key_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        entry_from_config("cap", {"task": "t", "schedule": "@daily"}, default_timezone=UTC)
    assert (refused.value.entry, refused.value.field) == ("cap", "name")


def test_a_periodic_name_that_would_be_a_global_key_is_refused(redis_url: str) -> None:
    app = make_app(redis_url)
    with pytest.raises(ConfigError) as refused:
        periodic("@daily", name="cap")(app.tasks["tasks.cleanup"])
    assert refused.value.field == "name"


def test_a_static_name_with_braces_or_too_long_has_keys_tagged_by_a_digest() -> None:
    """Round 62: Celery's ``add_periodic_task`` without ``name=`` names an entry
    ``repr(signature)``, braces and all: accepted for a static entry, whose keys' hash tag is
    then a digest of the name (one tag per name, never a brace inside it)."""
    keys = Keys("scheduler:")
    tags = set()
    for name in BRACED_NAMES:
        entry_from_config(name, {"task": "t", "schedule": "@daily"}, default_timezone=UTC)
        entry_keys = keys.entry_keys(name)
        tag = entry_keys[0][len("scheduler:{") : entry_keys[0].index("}:")]
        assert tag.startswith("#") and "{" not in tag and "}" not in tag
        assert all(key.startswith(f"scheduler:{{{tag}}}:") for key in entry_keys)
        tags.add(tag)
    assert len(tags) == len(BRACED_NAMES)
    assert keys.state("plain-name") == "scheduler:{plain-name}:state"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_manager_add_refuses_such_a_name_and_stores_nothing(app: Celery, name: str) -> None:
    manager = Manager(app)
    with pytest.raises(ConfigError) as refused:
        manager.add(name, "tasks.cleanup", "@daily")
    assert (refused.value.entry, refused.value.field) == (name, "name")
    assert manager.store().get(name) is None


@pytest.mark.parametrize("name", BAD_NAMES)
def test_cli_add_refuses_such_a_name_with_exit_2(run: Run, name: str) -> None:
    assert_one_line_error(
        run("add", name, "tasks.cleanup", "@daily"), 2, f"entry {name!r}, field 'name'"
    )


def test_names_near_the_reserved_ones_are_fine() -> None:
    for name in ("caps", "runtime", "replicas", "workers", "Cap"):
        entry_from_config(name, {"task": "t", "schedule": "@daily"}, default_timezone=UTC)


# -- 4. the promised first slot is computed from the instant the store records -----------------


def test_add_and_update_pass_the_instant_of_their_next_run_to_the_store(app: Celery) -> None:
    clock = FakeClock(datetime(2026, 3, 2, 22, 56, 29, 700000, tzinfo=UTC))
    manager = Manager(app, clock=clock)
    job = manager.add("every5", "tasks.cleanup", "every 5 seconds")
    stored = manager.store().get("every5")
    assert stored is not None and stored.since == clock()
    assert job.next_run == datetime(2026, 3, 2, 22, 56, 30, tzinfo=UTC)
    clock.advance(3)
    updated = manager.update("every5", schedule="every 10 seconds")
    again = manager.store().get("every5")
    assert again is not None and again.since == clock()
    assert updated.next_run == datetime(2026, 3, 2, 22, 56, 40, tzinfo=UTC)


def test_cli_add_passes_the_instant_it_printed_from(
    run: Run, app: Celery, redis_client: redis.Redis
) -> None:
    before = datetime.now(UTC)
    data = json.loads(run("add", "every5", "tasks.cleanup", "every 5 seconds", "--json").stdout)
    stored = RuntimeStore(redis_client, KEYS).get("every5")
    assert stored is not None and stored.since is not None and stored.since >= before
    first = datetime.fromisoformat(data["next_run"])
    assert stored.since < first <= stored.since + timedelta(seconds=5)


# -- 5. finished entries --------------------------------------------------------------------------


@pytest.fixture
def finished(app: Celery, redis_client: redis.Redis) -> Manager:
    """A runtime entry with max_runs=2 the claim script recorded as finished."""
    manager = Manager(app)
    manager.add("twice", "tasks.cleanup", "every 5 seconds", max_runs=2)
    redis_client.hset(KEYS.state("twice"), mapping={"runs": "2", "finished": "2"})
    return manager


def test_a_finished_entry_is_a_finished_job_without_a_next_run(finished: Manager) -> None:
    job = finished.get("twice")
    assert (job.finished, job.next_run) == (True, None)
    assert [j.finished for j in finished.jobs()] == [False, False, True]


def test_an_entry_is_finished_as_soon_as_its_last_run_is_claimed(
    app: Celery, redis_client: redis.Redis
) -> None:
    manager = Manager(app)
    manager.add("once", "tasks.cleanup", "every 5 seconds", one_off=True)
    assert manager.get("once").finished is False
    redis_client.hset(KEYS.state("once"), "runs", "1")
    assert (manager.get("once").finished, manager.get("once").next_run) == (True, None)


def test_an_entry_whose_max_runs_was_raised_is_not_finished_any_more(
    finished: Manager,
) -> None:
    job = finished.update("twice", max_runs=3)
    assert (job.finished, job.next_run is not None) == (False, True)


@pytest.mark.usefixtures("finished")
def test_list_and_show_say_finished(run: Run) -> None:
    jobs = {job["name"]: job for job in json.loads(run("list", "--json").stdout)}
    assert (jobs["twice"]["finished"], jobs["twice"]["next_run"]) == (True, None)
    assert jobs["cleanup"]["finished"] is False
    row = next(line for line in run("list").stdout.splitlines() if line.startswith("twice"))
    assert row.split()[-2:] == ["finished", "runtime"]
    shown = run("show", "twice")
    assert "state        finished (max runs 2 reached)" in shown.stdout
    assert json.loads(run("show", "twice", "--json").stdout)["finished"] is True


# -- 6. corrupted stored records ------------------------------------------------------------------


@pytest.fixture
def deep(app: Celery, redis_client: redis.Redis) -> None:
    """A good runtime entry beside one whose JSON is nested too deep to decode."""
    Manager(app).add("good", "tasks.cleanup", "every 5 seconds")
    store_raw(redis_client, "deep", DEEP)


@pytest.mark.usefixtures("deep")
def test_list_skips_a_runtime_entry_nested_too_deep_with_a_one_line_warning(run: Run) -> None:
    result = run("list", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert [job["name"] for job in json.loads(result.stdout)] == ["cleanup", "good", "single"]
    assert "runtime entry 'deep'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("deep")
@pytest.mark.parametrize("command", ["show", "history", "trigger", "pause"])
def test_commands_on_a_runtime_entry_nested_too_deep_are_one_line(run: Run, command: str) -> None:
    assert_one_line_error(run(command, "deep"), 1, "entry 'deep': stored JSON cannot be decoded")


@pytest.mark.usefixtures("deep")
def test_validate_reports_a_runtime_entry_nested_too_deep(run: Run) -> None:
    result = run("validate", "--json")
    assert result.exit_code == 1
    errors = json.loads(result.stdout)["errors"]
    assert [(e["entry"], e["source"]) for e in errors] == [("deep", "runtime")]


@pytest.mark.parametrize(
    ("item", "shown"),
    [
        (DEEP, "[[[["),
        (json.dumps({"slot": "not a time", "at": 1e30, "outcome": "x"}), "not a time"),
    ],
    ids=["nested-too-deep", "bad-times"],
)
def test_history_shows_an_item_that_does_not_parse_as_it_is(
    run: Run, redis_client: redis.Redis, item: str, shown: str
) -> None:
    redis_client.lpush(KEYS.history("cleanup"), item)
    for command in (("history", "cleanup"), ("show", "cleanup"), ("history", "cleanup", "--json")):
        result = run(*command)
        assert result.exit_code == 0, (command, result.stderr, result.exception)
        assert shown in result.stdout


@pytest.mark.parametrize(
    "record",
    [DEEP, json.dumps({"last_tick": "0001-01-01T00:00:00+05:00", "pid": 1})],
    ids=["nested-too-deep", "tick-out-of-range"],
)
def test_replicas_lists_a_record_that_does_not_parse(
    run: Run, redis_client: redis.Redis, record: str
) -> None:
    redis_client.hset(KEYS.replicas, "h:1:a", record)
    result = run("replicas", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert [r["id"] for r in json.loads(result.stdout)["replicas"]] == ["h:1:a"]
    assert run("replicas").exit_code == 0


@pytest.mark.parametrize(
    "state",
    [{"runs": "lots"}, {"sent_at": "yesterday"}, {"paused": "1", "paused_at": "noon"}],
    ids=["runs", "sent_at", "paused_at"],
)
def test_a_state_hash_field_that_does_not_parse_does_not_stop_list_or_show(
    run: Run, redis_client: redis.Redis, state: dict[str, str]
) -> None:
    redis_client.hset(KEYS.state("cleanup"), mapping=state)
    for command in (("list",), ("show", "cleanup"), ("list", "--json")):
        result = run(*command)
        assert result.exit_code == 0, (command, result.stderr, result.exception)
