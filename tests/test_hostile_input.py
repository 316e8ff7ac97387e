"""Issue 16: nothing a caller stores or configures stops the cluster, floods the broker or leaks a
secret. One section per item of the issue; every test runs against a real Redis."""

from __future__ import annotations

import json
import logging
import random
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from datetime import timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result
from replica_helpers import store_raw

from celery_fork_scheduler import Manager, every
from celery_fork_scheduler import signals as fork_signals
from celery_fork_scheduler.backends import redis_connection
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.metrics import Metrics
from celery_fork_scheduler.testing import FakeClock, free_port

KEYS = Keys("scheduler:")
START = "2026-03-02T10:00:00.300+00:00"
SECRET = "TAILSECRET"
DOCS = Path(__file__).resolve().parent.parent / "docs"
UTC = timezone.utc


def make_app(redis_url: str, beat_schedule: dict[str, Any] | None = None, **conf: Any) -> Celery:
    app = replica_helpers.make_app(redis_url, beat_schedule or {}, main="hostile", **conf)

    @app.task(name="tasks.t", shared=False)  # type: ignore[untyped-decorator]
    def t(*args: Any, **kwargs: Any) -> None: ...

    return app


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with closing(make_app(redis_url)) as app:
        yield app


@pytest.fixture
def manager(app: Celery) -> Manager:
    return Manager(app, clock=FakeClock(START))


def cli(app: Celery, *args: str) -> Result:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(schedule, list(args), obj=obj)


#: Written by the heartbeat of any worker's hooks (an in-process worker of an earlier test may
#: still beat): not the calls under test.
HEARTBEAT_KEYS = {Keys("scheduler:").workers_seen.encode()}


def dump(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its value, to check that a refused call stored nothing."""
    result: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        if key in HEARTBEAT_KEYS:
            continue
        kind = client.type(key)
        if kind == b"hash":
            result[key] = client.hgetall(key)
        elif kind == b"zset":
            result[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            result[key] = client.lrange(key, 0, -1)
        else:
            result[key] = client.get(key)
    return result


def refused(
    call: Any, *, entry: str | None, field: str, unchanged: redis.Redis | None = None
) -> ConfigError:
    """``call()`` raises a ConfigError naming ``entry`` and ``field`` (and, given ``unchanged``,
    leaves every key of that Redis as it was)."""
    before = dump(unchanged) if unchanged is not None else None
    with pytest.raises(ConfigError) as raised:
        call()
    if unchanged is not None:
        assert dump(unchanged) == before
    assert raised.value.field == field, raised.value
    if entry is not None:
        assert raised.value.entry == entry, raised.value
    return raised.value


def stored(**data: Any) -> str:
    return json.dumps({"schema": 1, "task": "tasks.t", **data})


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


class Replica(replica_helpers.SteppedReplica):
    """One Scheduler on the test Redis: fake clock, recording publisher."""

    def __init__(self, redis_url: str, beat_schedule: dict[str, Any], **conf: Any) -> None:
        super().__init__(redis_url, make_app(redis_url, beat_schedule, **conf))

    def fired(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for occurrence in self.publisher.occurrences:
            counts[occurrence.entry] = counts.get(occurrence.entry, 0) + 1
        return counts

    def close(self) -> None:
        self.scheduler.close()
        self.app.close()


# -- 1. a poisoned stored record stops nothing -----------------------------------------------------


def test_args_nested_990_deep_are_refused_at_the_call_and_store_nothing(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("fine", "tasks.t", every(1).minutes)
    message = refused(
        lambda: manager.add("deep", "tasks.t", every(1).minutes, args=[nested(990)]),
        entry="deep",
        field="args",
        unchanged=redis_client,
    )
    assert "levels deep" in str(message)
    too_deep = {"x": nested(40)}
    refused(
        lambda: manager.update("fine", kwargs=too_deep),
        entry="fine",
        field="kwargs",
        unchanged=redis_client,
    )
    manager.add("shallow", "tasks.t", every(1).minutes, args=[nested(31)])  # under the cap


def test_the_store_refuses_json_nested_past_the_cap(manager: Manager) -> None:
    with pytest.raises(ConfigError, match="levels deep"):
        manager.store().put("deep", {"schema": 1, "args": nested(500)}, 0)


def test_a_poisoned_runtime_record_is_skipped_by_beat_and_the_cli_says_so(
    redis_url: str, redis_client: redis.Redis, app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    store_raw(redis_client, "good", stored(schedule={"type": "interval", "every": 1}))
    store_raw(redis_client, "poisoned", '{"schema": 1, "args": ' + "[" * 990 + "]" * 990 + "}")
    replica = Replica(redis_url, {"static": {"task": "tasks.t", "schedule": every(1).seconds}})
    try:
        with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
            replica.run(3)
    finally:
        replica.close()
    assert set(replica.fired()) == {"static", "good"}
    assert any("'poisoned'" in record.getMessage() for record in caplog.records)
    result = cli(app, "list")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "poisoned" in line]
    assert len(warnings) == 1 and "Traceback" not in result.output


def test_deep_history_and_replica_records_are_shown_as_text(
    manager: Manager, redis_client: redis.Redis, app: Celery
) -> None:
    manager.add("fine", "tasks.t", every(1).minutes)
    deep = "[" * 990 + "]" * 990
    redis_client.lpush(KEYS.history("fine"), deep)
    redis_client.hset(KEYS.replicas, "r1", deep)
    assert len(manager.history_items("fine")) == 1
    assert [replica.id for replica in manager.replicas(within=float("inf"))] == ["r1"]
    for command in (("history", "fine"), ("show", "fine"), ("replicas",)):
        result = cli(app, *command)
        assert result.exit_code == 0, result.output


# -- 2. the name 'cap' -----------------------------------------------------------------------------


def test_an_entry_named_cap_is_refused(manager: Manager) -> None:
    refused(lambda: manager.add("cap", "tasks.t", every(1).minutes), entry="cap", field="name")


# -- 3. interval floor and size limits -------------------------------------------------------------


def test_an_interval_under_the_floor_is_refused_by_the_manager(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("fine", "tasks.t", every(1).seconds)
    flood = refused(
        lambda: manager.add("flood", "tasks.t", 1e-6),
        entry="flood",
        field="schedule",
        unchanged=redis_client,
    )
    assert "fork_scheduler_min_interval" in str(flood)
    refused(
        lambda: manager.update("fine", schedule=0.5),
        entry="fine",
        field="schedule",
        unchanged=redis_client,
    )


def test_an_interval_under_the_floor_stops_beat_at_start_naming_the_entry(
    redis_url: str,
) -> None:
    with pytest.raises(ConfigError) as stopped:
        Replica(redis_url, {"flood": {"task": "tasks.t", "schedule": 0.001}})
    assert stopped.value.entry == "flood" and stopped.value.field == "schedule"


def test_the_floor_is_a_setting(redis_url: str) -> None:
    app = make_app(redis_url, fork_scheduler_min_interval=0.25)
    manager = Manager(app, clock=FakeClock(START))
    manager.add("quick", "tasks.t", 0.5)
    refused(lambda: manager.add("quicker", "tasks.t", 0.1), entry="quicker", field="schedule")
    slow = make_app(redis_url, fork_scheduler_min_interval=120)
    refused(
        lambda: Manager(slow).add("cron", "tasks.t", "cron * * * * *"),
        entry="cron",
        field="schedule",
    )
    app.close()
    slow.close()


def test_beat_follows_a_lower_floor(redis_url: str, manager: Manager) -> None:
    app = make_app(redis_url, fork_scheduler_min_interval=0.25)
    Manager(app).add("quick-runtime", "tasks.t", 0.5)
    app.close()
    replica = Replica(
        redis_url,
        {"quick-static": {"task": "tasks.t", "schedule": 0.5}},
        fork_scheduler_min_interval=0.25,
    )
    try:
        replica.run(2)
    finally:
        replica.close()
    assert set(replica.fired()) == {"quick-static", "quick-runtime"}


def test_a_cli_add_under_the_floor_is_one_line_naming_the_entry(app: Celery) -> None:
    result = cli(app, "add", "flood", "tasks.t", "every 1 seconds")
    assert result.exit_code == 0, result.output
    app.conf.fork_scheduler_min_interval = 5
    result = cli(app, "add", "flood2", "tasks.t", "every 1 seconds")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "'flood2'" in result.stderr and "'schedule'" in result.stderr


@pytest.mark.parametrize(
    ("policies", "field"),
    [
        ({"args": ["x" * 70_000]}, "args"),
        ({"kwargs": {"blob": "x" * 70_000}}, "kwargs"),
        ({"description": "x" * 5_000}, "description"),
        ({"tags": [f"t{i}" for i in range(101)]}, "tags"),
        ({"tags": ["x" * 101]}, "tags"),
    ],
    ids=["args", "kwargs", "description", "many-tags", "long-tag"],
)
def test_oversized_fields_are_refused_naming_the_field(
    manager: Manager, redis_client: redis.Redis, policies: dict[str, Any], field: str
) -> None:
    refused(
        lambda: manager.add("big", "tasks.t", every(1).minutes, **policies),
        entry="big",
        field=field,
        unchanged=redis_client,
    )


@pytest.mark.parametrize(
    ("policies", "field"),
    [
        ({"args": "x" * 1_000_000}, "args"),
        ({"args": "abc"}, "args"),
        ({"kwargs": ["x"] * 100_000}, "kwargs"),
        ({"tags": ["t"] * 100_000 + [1]}, "tags"),
        ({"options": {"headers": ["x"] * 100_000}}, "options"),
        ({"timezone": "x" * 1_000_000}, "timezone"),
    ],
    ids=["args", "args-string", "kwargs", "tags", "headers", "timezone"],
)
def test_a_huge_wrong_value_makes_a_short_error(
    manager: Manager, policies: dict[str, Any], field: str
) -> None:
    message = refused(
        lambda: manager.add("big", "tasks.t", every(1).minutes, **policies),
        entry="big",
        field=field,
    )
    assert len(str(message)) < 300


def test_the_entry_size_limit_is_a_setting(redis_url: str) -> None:
    app = make_app(redis_url, fork_scheduler_max_entry_size=1_048_576)
    Manager(app).add("big", "tasks.t", every(1).minutes, args=["x" * 500_000])
    app.close()


def test_a_long_pause_note_is_refused(manager: Manager) -> None:
    manager.add("fine", "tasks.t", every(1).minutes)
    refused(lambda: manager.pause("fine", note="x" * 1_001), entry="fine", field="note")
    assert not manager.get("fine").paused


# -- 4. secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:pw;{SECRET}@127.0.0.1:6379/0",
        f"redis://fork:pw/{SECRET}@127.0.0.1:6379/0",
        f"redis://fork:pw#{SECRET}@127.0.0.1:6379/0",
        f"redis://fork:pw?{SECRET}@127.0.0.1:6379/0",
        f"redis://fork:pw@{SECRET}@127.0.0.1:6379/0",
        f"rediss://:{SECRET}/x@127.0.0.1:6379/0",
        f"sentinel://:{SECRET}@h1:26379;sentinel://:{SECRET}@h2:26379",
    ],
    ids=["semicolon", "slash", "hash", "question", "at", "rediss", "sentinel"],
)
def test_special_characters_in_a_password_never_show(url: str) -> None:
    assert SECRET not in redis_connection.mask_url(url)
    assert SECRET not in redis_connection.scrub_secrets(f"cannot reach {url}: refused")
    try:
        client = redis_connection.client_from_url(url, {"master_name": "m"})
    except ConfigError as exc:
        assert SECRET not in str(exc)
    else:
        client.close()


def test_the_banner_and_backend_errors_hide_a_password_with_a_semicolon() -> None:
    url = f"redis://:pw;{SECRET}@127.0.0.1:{free_port()}/0"
    backend = RedisBackend.from_url(url, read_settings({"fork_scheduler_max_retries": 0}))
    try:
        assert SECRET not in backend.describe()
    finally:
        backend.close()


def test_a_url_that_is_not_a_string_is_not_printed() -> None:
    refused(
        lambda: read_settings({"fork_scheduler_redis_url": f"redis://:{SECRET}@h".encode()}),
        entry=None,
        field="fork_scheduler_redis_url",
    )
    try:
        read_settings({"fork_scheduler_redis_url": f"redis://:{SECRET}@h".encode()})
    except ConfigError as exc:
        assert SECRET not in str(exc)


def test_cli_errors_and_history_errors_are_scrubbed(
    manager: Manager, redis_client: redis.Redis, app: Celery
) -> None:
    manager.add("fine", "tasks.t", every(1).minutes)
    error = f"ConnectionError: redis://u:p@ss w{SECRET}@db:6379 refused"
    item = {"slot": "2026-03-02T10:00:00+00:00", "outcome": "error", "error": error}
    redis_client.lpush(KEYS.history("fine"), json.dumps(item))
    for command in (("history", "fine"), ("history", "fine", "--json"), ("show", "fine")):
        result = cli(app, *command)
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output and "refused" in result.output
    app.conf.fork_scheduler_redis_url = f"redis://:pw {SECRET}@127.0.0.1:{free_port()}/0"
    result = cli(app, "list")
    assert result.exit_code == 3 and SECRET not in result.output


# -- 5. options.headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["task", "id", "root_id", "parent_id", "group", "eta", "expires", "retries", "argsrepr",
     "kwargsrepr", "origin", "ignore_result", "shadow", "lang", "timelimit", "Task",
     "fork_scheduler_entry", "fork_scheduler_anything"],
)  # fmt: skip
def test_reserved_message_headers_are_refused(manager: Manager, header: str) -> None:
    message = refused(
        lambda: manager.add(
            "h", "tasks.t", every(1).minutes, options={"headers": {header: "proj.dangerous"}}
        ),
        entry="h",
        field="options",
    )
    assert repr(header) in str(message)
    manager.add("ok", "tasks.t", every(1).minutes, options={"headers": {"x-trace": "1"}})


def test_a_stored_entry_with_a_reserved_header_is_skipped(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store_raw(
        redis_client,
        "spoof",
        stored(schedule={"type": "interval", "every": 1}, options={"headers": {"id": "x"}}),
    )
    store_raw(redis_client, "good", stored(schedule={"type": "interval", "every": 1}))
    replica = Replica(redis_url, {})
    try:
        replica.run(2)
    finally:
        replica.close()
    assert set(replica.fired()) == {"good"}


# -- 6. metrics ------------------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port`` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_metrics_listen_on_loopback_by_default(redis_url: str) -> None:
    port = free_port()
    replica = Replica(
        redis_url,
        {"a": {"task": "tasks.t", "schedule": every(1).seconds}},
        fork_scheduler_metrics_port=port,
    )
    try:
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert answer.status == 200
    finally:
        replica.close()
    assert read_settings({"fork_scheduler_metrics_address": "0.0.0.0"}).metrics_address


def test_a_removed_entry_drops_its_series(redis_url: str, manager: Manager) -> None:
    manager.add("gone", "tasks.t", every(1).seconds)
    replica = Replica(redis_url, {}, fork_scheduler_metrics_port=free_port())
    try:
        replica.run(2)
        metrics = replica.scheduler.metrics
        assert metrics is not None
        fork_signals.entry_skipped.send(sender=replica.scheduler, entry="gone", reason="busy")
        scrape = metrics._prom.generate_latest(metrics.registry).decode()
        assert 'entry="gone"' in scrape
        manager.remove("gone")
        replica.run(2)
        scrape = metrics._prom.generate_latest(metrics.registry).decode()
        assert 'entry="gone"' not in scrape
    finally:
        replica.close()


def test_metrics_forget_tolerates_unknown_entries() -> None:
    Metrics().forget("never-seen")


# -- 7. control characters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["esc\x1b[2J", "bel\x07", "nul\x00", "rlo\u202egnp.exe", "nl\n", "c1\x9b31m"]
)
def test_names_with_control_characters_are_refused(manager: Manager, name: str) -> None:
    message = refused(
        lambda: manager.add(name, "tasks.t", every(1).minutes), entry=name, field="name"
    )
    assert "\x1b" not in str(message) and "\u202e" not in str(message)
    refused(
        lambda: entry_from_config(name, {"task": "t", "schedule": 60}, default_timezone=UTC),
        entry=name,
        field="name",
    )


def test_stored_text_reaches_the_terminal_escaped(
    manager: Manager, redis_client: redis.Redis, app: Celery
) -> None:
    manager.add("fine", "tasks.t", every(1).minutes, description="title\x1b]0;pwned\x07 \u202eevil")
    manager.pause("fine", note="note\x1b[31m")
    item = {"slot": "2026-03-02T10:00:00+00:00", "outcome": "error", "error": "boom\x1b[2J"}
    redis_client.lpush(KEYS.history("fine"), json.dumps(item))
    redis_client.hset(KEYS.replicas, "r\x1b[5m", json.dumps({"last_tick": None}))
    store_raw(redis_client, "bad\x1b[2J", "{not json")
    for command in (("list",), ("show", "fine"), ("history", "fine"), ("replicas",)):
        result = cli(app, *command)
        assert result.exit_code == 0, result.output
        for bad in ("\x1b", "\x07", "\u202e"):
            assert bad not in result.output, (command, result.output)
    assert "\\x1b" in cli(app, "show", "fine").output


# -- 8. bounds on CLI counts and settings ----------------------------------------------------------


def test_show_refuses_a_huge_count(manager: Manager, app: Celery) -> None:
    manager.add("fine", "tasks.t", every(1).seconds)
    result = cli(app, "show", "fine", "-n", "100000000")
    assert result.exit_code == 2 and "100000000" in result.stderr
    assert cli(app, "show", "fine", "-n", "0").exit_code == 2


def test_deep_json_args_on_the_cli_are_one_line(app: Celery) -> None:
    result = cli(app, "add", "deep", "tasks.t", "every 1 minutes", "--args", "[" * 100_000)
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("history_size", 10**20),
        ("refresh_interval", 1e-6),
        ("max_retries", 10**9),
        ("max_concurrent", 2**70),
        ("key_prefix", "x{}"),
        ("key_prefix", "{app}"),
        ("key_prefix", "x" * 101),
        ("key_prefix", "a\x1bb"),
        ("lock_duration", 10**9),
        ("claim_lease", 1e-6),
        ("retry_delay", 3_600),
        ("catchup_grace", 10**9),
        ("singleton_lease", 1e-6),
        ("wait_replicas", 10**6),
        ("wait_timeout", 3_600),
        ("min_interval", 0),
        ("max_entry_size", 10),
        ("metrics_address", "0.0.0.0 x"),
        ("event_listeners", ["a.b"] * 101),
    ],
    ids=lambda value: str(value)[:20],
)
def test_extreme_settings_are_refused_at_start_naming_them(
    redis_url: str, setting: str, value: Any
) -> None:
    name = f"fork_scheduler_{setting}"
    message = refused(lambda: read_settings({name: value}), entry=None, field=name)
    assert len(str(message)) < 300
    with pytest.raises(ConfigError):
        Replica(redis_url, {}, **{name: value})


# -- 9. dependency audit ---------------------------------------------------------------------------


def test_the_docs_record_the_dependency_versions_tested() -> None:
    text = (DOCS / "security.md").read_text()
    for package in ("celery", "kombu", "redis", "click", "croniter"):
        assert f"| {package} | {metadata.version(package)} |" in text, package
    assert "audit skipped" in text


# -- 10. the security page says what is true -------------------------------------------------------


def test_the_security_page_states_the_writers_power_and_has_no_stale_list() -> None:
    text = (DOCS / "security.md").read_text()
    assert "Until they are fixed" not in text
    assert "any registered task" in text
    assert "ACL" in text and "read-only" in text


#: The read-only Redis user of docs/security.md: enough for list, show, history, replicas.
READ_ONLY_COMMANDS = "+hget +hgetall +hscan +hmget +lrange +zrange +zscore +get +exists +time +ping"


def test_a_read_only_acl_user_reads_everything_and_changes_nothing(
    redis_url: str, redis_client: redis.Redis, manager: Manager
) -> None:
    manager.add("fine", "tasks.t", every(1).minutes)
    manager.pause("fine", note="why")
    redis_client.hset(KEYS.replicas, "r1", json.dumps({"entries": 1}))
    rule = ["on", ">ro-pw", "resetkeys", "~scheduler:*", "resetchannels", "-@all"]
    redis_client.execute_command("ACL", "SETUSER", "reader", *rule, *READ_ONLY_COMMANDS.split())
    try:
        port = redis_client.connection_pool.connection_kwargs["port"]
        reader = make_app(f"redis://reader:ro-pw@127.0.0.1:{port}/0")
        before = dump(redis_client)
        for command in (("list",), ("show", "fine"), ("history", "fine"), ("replicas",)):
            result = cli(reader, *command)
            assert result.exit_code == 0, result.output
        assert "why" in cli(reader, "show", "fine").output
        for command in (
            ("add", "new", "tasks.t", "every 1 minutes"),
            ("pause", "fine"),
            ("resume", "fine"),
            ("remove", "fine", "--yes"),
        ):
            result = cli(reader, *command)
            assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert dump(redis_client) == before
        reader.close()
    finally:
        redis_client.execute_command("ACL", "DELUSER", "reader")


# -- fuzz: random, deep, huge and malformed records ------------------------------------------------


def random_record(rng: random.Random) -> bytes | str:
    """One record that is not a valid entry: random bytes, deep or huge JSON, wrong shapes."""
    kind = rng.choice(["bytes", "deep", "huge", "wrong-type", "bad-field", "truncated", "nan"])
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == "deep":
        depth = rng.randrange(500, 5_000)
        return '{"schema": 1, "args": ' + "[" * depth + "]" * depth + "}"
    if kind == "huge":
        return stored(schedule="every 1 seconds", description="x" * rng.randrange(5_000, 200_000))
    if kind == "wrong-type":
        return json.dumps(rng.choice([[1, 2], "text", 3, None, {"schema": "1"}]))
    if kind == "bad-field":
        field, value = rng.choice(
            [
                ("schedule", {"type": "interval", "every": 1e-6}),
                ("schedule", 1e300),
                ("options", {"headers": {"task": "proj.dangerous"}}),
                ("tags", ["t\x1b"]),
                ("start_at", "9999-12-31T23:59:59-14:00"),
                ("kwargs", {"k": nested(40)}),
            ]
        )
        return stored(**{"schedule": "every 1 seconds", field: value})
    if kind == "truncated":
        text = stored(schedule="every 1 seconds")
        return text[: rng.randrange(1, len(text) - 1)]
    return stored(schedule=float("nan"))


@pytest.mark.parametrize("seed", range(3))
def test_fuzzed_runtime_and_history_records_stop_nothing(
    redis_url: str, redis_client: redis.Redis, seed: int
) -> None:
    rng = random.Random(seed)
    app = make_app(redis_url)
    manager = Manager(app, clock=FakeClock(START))
    good = [f"good-{i}" for i in range(3)]
    for name in good:
        manager.add(name, "tasks.t", every(1).seconds)
    bad = [f"bad-{i}" for i in range(12)]
    for name in bad:
        store_raw(redis_client, name, random_record(rng))
    for name in [*good, *bad]:
        for _ in range(3):
            redis_client.lpush(KEYS.history(name), random_record(rng))
    redis_client.hset(KEYS.replicas, "fuzzed", random_record(rng))
    replica = Replica(redis_url, {"static": {"task": "tasks.t", "schedule": every(1).seconds}})
    try:
        replica.run(3)
    finally:
        replica.close()
    fired = replica.fired()
    assert set(fired) == {"static", *good}
    assert all(count >= 2 for count in fired.values()), fired
    result = cli(app, "list")
    assert result.exit_code == 0, result.output
    for name in bad:
        assert len([line for line in result.stderr.splitlines() if repr(name) in line]) == 1
    assert len(result.stderr.strip().splitlines()) == len(bad)
    for name in good:
        for command in (("history", name), ("show", name)):
            assert cli(app, *command).exit_code == 0
    assert cli(app, "replicas").exit_code == 0
    app.close()
