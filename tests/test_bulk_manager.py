"""The bulk runtime API (issue 20): ``Manager.add_many`` / ``update_many`` / ``remove_many``,
``remove_by_tag``, ``pause(tag=)`` / ``resume(tag=)`` and ``schedule add --file``, on a real
Redis; and what a beat replica sees of them."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner
from replica_helpers import make_scheduler, run_for

import celery_fork_scheduler.store as store_module
from celery_fork_scheduler import ConfigError, JobNotFoundError, Manager, StaleVersionError
from celery_fork_scheduler.cli import schedule
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.manager import BulkConfigError, BulkConflictError, StoredRecordError
from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

KEYS = Keys("scheduler:")
STATIC = {"nightly": {"task": "tasks.report", "schedule": "0 3 * * *", "tags": ["reports"]}}
RICH = {
    "task": "tasks.report",
    "schedule": "daily at 09:00",
    "timezone": "America/New_York",
    "args": [1, "two"],
    "kwargs": {"region": "eu"},
    "options": {"queue": "reports", "priority": 5},
    "tags": ["tenants", "acme"],
    "overlap": "buffer_one",
    "start_at": "2026-01-01T00:00:00+00:00",
    "end_at": "2027-01-01T00:00:00+00:00",
    "max_runs": 100,
    "catchup": "skip",
    "catchup_window": 600,
    "description": "the tenant report",
}


def make_app(redis_url: str, **conf: Any) -> Celery:
    app = Celery("bulk_tests", broker="memory://", set_as_current=False)
    app.conf.update(
        timezone="UTC",
        beat_schedule=STATIC,
        fork_scheduler_redis_url=redis_url,
        fork_scheduler_refresh_interval=1.0,
        **conf,
    )
    return app


def sync() -> None:
    """The task of the tests' entries."""


def tenants(count: int, tag: str = "tenants", start: int = 0) -> list[dict[str, Any]]:
    return [
        {"name": f"sync-{i}", "task": "tasks.sync", "schedule": "every 10 seconds", "tags": [tag]}
        for i in range(start, start + count)
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock("2026-03-02T10:00:00.300+00:00")


@pytest.fixture
def manager(redis_url: str) -> Manager:
    return Manager(make_app(redis_url))


def stored(client: redis.Redis, name: str) -> dict[str, Any]:
    return dict(json.loads(client.hget(KEYS.runtime_entries, name) or b"null"))


def since_of(client: redis.Redis, name: str) -> list[int]:
    return [int(part) for part in (client.hget(KEYS.runtime_since, name) or b"").split()]


# -- add_many -----------------------------------------------------------------------------------


def test_add_many_stores_what_add_stores(manager: Manager, redis_client: redis.Redis) -> None:
    manager.add(
        "one",
        RICH["task"],
        RICH["schedule"],
        **{k: v for k, v in RICH.items() if k not in ("task", "schedule")},
    )
    manager.add_many([{"name": "many", **RICH}])
    assert stored(redis_client, "many") == stored(redis_client, "one")
    assert manager.get("many").next_run == manager.get("one").next_run
    assert manager.get("many").tags == frozenset({"tenants", "acme"})


def test_add_many_returns_increasing_versions_that_are_the_change_log(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("before", "tasks.sync", "every 10 seconds")
    versions = manager.add_many(tenants(2500), batch_size=1000)
    assert list(versions) == [f"sync-{i}" for i in range(2500)]
    assert list(versions.values()) == list(range(2, 2502))
    assert int(redis_client.get(KEYS.runtime_version) or 0) == 2501
    assert redis_client.zscore(KEYS.runtime_changes, "sync-2499") == 2501
    assert manager.get("sync-7").version == versions["sync-7"]
    assert redis_client.get(KEYS.runtime_epoch) is not None


def test_each_batch_is_stamped_with_the_managers_clock(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    ticking = iter(range(100))

    def now() -> datetime:
        return clock.now + timedelta(seconds=next(ticking))

    Manager(make_app(redis_url), clock=now).add_many(tenants(5), batch_size=2)
    stamps = [since_of(redis_client, f"sync-{i}") for i in range(5)]
    base = int(clock.now.timestamp() * 1_000_000)
    assert stamps == [[base, base]] * 2 + [[base + 1_000_000] * 2] * 2 + [[base + 2_000_000] * 2]


def test_add_many_checks_everything_first_and_names_every_error(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("taken", "tasks.sync", "every 10 seconds")
    version = redis_client.get(KEYS.runtime_version)
    definitions: list[Any] = [
        *tenants(3),
        {"name": "bad-schedule", "task": "tasks.sync", "schedule": "every blue moon"},
        {"name": "bad-key", "task": "tasks.sync", "schedule": "every 10 seconds", "colour": 1},
        {"name": "nightly", "task": "tasks.sync", "schedule": "every 10 seconds"},
        {"name": "taken", "task": "tasks.sync", "schedule": "every 10 seconds"},
        {"name": "sync-1", "task": "tasks.sync", "schedule": "every 10 seconds"},
        {"name": "a{b}", "task": "tasks.sync", "schedule": "every 10 seconds"},
        {"task": "tasks.sync", "schedule": "every 10 seconds"},
        "not a dict",
    ]
    with pytest.raises(BulkConfigError) as raised:
        manager.add_many(definitions)
    errors = raised.value.errors
    assert [(error.entry, error.field) for error in errors if isinstance(error, ConfigError)] == [
        ("bad-schedule", "schedule"),
        ("bad-key", "colour"),
        ("nightly", None),
        ("sync-1", "name"),
        ("a{b}", "name"),
        (None, "name"),
        (None, None),
        ("taken", None),
    ]
    message = str(raised.value)
    assert message.startswith("8 of 11 definitions refused, nothing was written: ")
    assert "(definitions[9])" in message and "(definitions[10])" in message
    assert isinstance(raised.value, ConfigError)
    assert redis_client.get(KEYS.runtime_version) == version
    assert redis_client.hlen(KEYS.runtime_entries) == 1


def test_a_bulk_error_shows_ten_errors_and_keeps_all(manager: Manager) -> None:
    bad = [{"name": f"bad-{i}", "task": "tasks.sync", "schedule": "nope"} for i in range(25)]
    with pytest.raises(BulkConfigError) as raised:
        manager.add_many(bad)
    assert len(raised.value.errors) == 25
    assert str(raised.value).endswith("; and 15 more")
    assert str(raised.value).count("field 'schedule'") == 10


def test_add_many_refuses_what_add_refuses(redis_url: str) -> None:
    manager = Manager(make_app(redis_url, fork_scheduler_max_entry_size=2048))
    with pytest.raises(BulkConfigError) as raised:
        manager.add_many(
            [
                {"name": "big", "task": "t", "schedule": "every 10 seconds", "args": ["x" * 4000]},
                {
                    "name": "nan",
                    "task": "t",
                    "schedule": "every 10 seconds",
                    "args": [float("nan")],
                },
                {"name": "fn", "task": "t", "schedule": "every 10 seconds", "args": lambda: [1]},
                {"name": "x" * 201, "task": "t", "schedule": "every 10 seconds"},
                {"name": "fast", "task": "t", "schedule": "every 0.1 seconds"},
            ]
        )
    refused = {e.entry: e.field for e in raised.value.errors if isinstance(e, ConfigError)}
    assert refused == {
        "big": "args",
        "nan": "args",
        "fn": "args",
        "x" * 60: "name",
        "fast": "schedule",
    }
    with pytest.raises(ConfigError) as single:
        manager.add("big", "t", "every 10 seconds", args=["x" * 4000])
    assert single.value.field == "args"


def test_replace_existing_keeps_the_creation_instant(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock
) -> None:
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add_many(tenants(2))
    created = since_of(redis_client, "sync-0")
    clock.advance(60)
    versions = manager.add_many(
        [{**definition, "args": [1]} for definition in tenants(2)], replace_existing=True
    )
    assert versions == {"sync-0": 3, "sync-1": 4}
    assert stored(redis_client, "sync-0")["args"] == [1]
    assert since_of(redis_client, "sync-0") == [created[0] + 60_000_000, created[0]]


def test_task_objects_and_singleton_mode_as_in_add(redis_url: str) -> None:
    app = make_app(redis_url)
    task = app.task(name="tasks.sync", shared=False)(sync)
    manager = Manager(app).singleton_mode()
    manager.add_many([{"name": "a", "task": task, "schedule": "every 10 seconds"}])
    job = manager.get("a")
    assert (job.task, job.overlap) == ("tasks.sync", "skip")


def test_a_re_added_name_starts_afresh(
    layout: str, manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add_many(tenants(3))
    state = KEYS.state("sync-1")
    redis_client.hset(state, mapping={"runs": 5, "paused": "1", "hwm": "123"})
    redis_client.set(KEYS.buffered("sync-1"), "held back")
    redis_client.rpush(KEYS.history("sync-1"), "{}")
    assert manager.remove_many(["sync-1", "sync-2"]) == ["sync-1", "sync-2"]
    assert int(redis_client.hget(state, "removed") or 0) > 1  # the removal instant (us)
    assert 0 < redis_client.pttl(state) <= 86_400_000
    assert redis_client.pttl(KEYS.history("sync-1")) > 0
    assert not redis_client.exists(KEYS.buffered("sync-1"))
    assert redis_client.zscore(KEYS.runtime_removed, "sync-1") is not None
    redis_client.set(KEYS.buffered("sync-1"), "left over")
    manager.add_many(tenants(3)[1:2])
    fields = redis_client.hgetall(state)
    version, _ = fields.pop(b"defined").split()  # the add's version and instant (round 39)
    assert int(version) == redis_client.zscore(KEYS.runtime_changes, "sync-1")
    assert fields == {b"hwm": b"123", b"fresh_after": b"123"}
    assert redis_client.pttl(state) == -1 and redis_client.pttl(KEYS.history("sync-1")) == -1
    assert not redis_client.exists(KEYS.buffered("sync-1"))
    assert redis_client.zscore(KEYS.runtime_removed, "sync-1") is None
    assert manager.get("sync-1").run_count == 0


def test_an_entry_added_meanwhile_fails_its_batch_only(
    layout: str, manager: Manager, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Manager._versions_ahead

    @contextlib.contextmanager
    def check_then_race(self: Manager, names: Any) -> Iterator[Any]:
        with real(self, names) as read:

            def read_then_race() -> Any:
                found = read()
                Manager(self.app).add("sync-3", "tasks.sync", "every 10 seconds")  # after it
                return found

            yield read_then_race

    monkeypatch.setattr(Manager, "_versions_ahead", check_then_race)
    with pytest.raises(BulkConflictError) as raised:
        manager.add_many(tenants(9), batch_size=2)
    assert raised.value.written == ["sync-0", "sync-1"]
    assert [(c.name, c.expected, c.current) for c in raised.value.conflicts] == [("sync-3", 0, 1)]
    assert isinstance(raised.value, StaleVersionError)
    assert sorted(n.decode() for n in redis_client.hkeys(KEYS.runtime_entries)) == [
        "sync-0",
        "sync-1",
        "sync-3",
    ]  # the batches after the one that failed wrote nothing either
    assert redis_client.get(KEYS.runtime_version) == b"3"
    assert not redis_client.keys("scheduler:{runtime}:bulk:*")  # the chain is gone


def test_a_call_that_fails_while_its_versions_are_asked_leaves_no_reply_behind(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add_many asks Redis whether its names exist while it validates them: a call that raises
    meanwhile leaves no unread reply on the connection for the next command to take."""
    manager.add_many(tenants(3))

    def broken(*args: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(Manager, "_encoded", broken)
    with pytest.raises(KeyError):
        manager.add_many(tenants(2500, start=10))
    monkeypatch.undo()
    with pytest.raises(BulkConfigError, match="'sync-2': a runtime entry of this name exists"):
        manager.add_many(tenants(3, start=2))
    assert manager.store().versions(["sync-0", "sync-10"]) == {"sync-0": 1, "sync-10": None}
    assert list(manager.add_many(tenants(2, start=3))) == ["sync-3", "sync-4"]


def test_the_batch_size_is_checked(manager: Manager) -> None:
    for size in (0, 10_001, True, 1.5):
        with pytest.raises(ConfigError, match="batch_size"):
            manager.add_many(tenants(1), batch_size=size)  # type: ignore[arg-type]


# -- update_many, remove_many, remove_by_tag, pause, resume ------------------------------------


def test_update_many_changes_fields_as_update_does(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add_many(
        [
            {"name": "a", **RICH},
            {"name": "b", "task": "tasks.sync", "schedule": "every 10 seconds", "max_runs": 3},
        ]
    )
    manager.add(
        "c",
        RICH["task"],
        RICH["schedule"],
        **{k: v for k, v in RICH.items() if k not in ("task", "schedule")},
    )
    versions = manager.update_many(
        [{"name": "a", "args": [9], "singleton": True}, {"name": "b", "one_off": True}]
    )
    manager.update("c", args=[9], singleton=True)
    assert versions == {"a": 4, "b": 5}
    assert {**stored(redis_client, "a"), "tags": None} == {
        **stored(redis_client, "c"),
        "tags": None,
    }
    assert (stored(redis_client, "a")["overlap"], stored(redis_client, "a")["args"]) == (
        "skip",
        [9],
    )
    assert stored(redis_client, "b")["max_runs"] == 1


def test_update_many_refuses_everything_on_any_error(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add_many(tenants(3))
    redis_client.hset(KEYS.runtime_entries, "corrupt", b"{not json")
    version = redis_client.get(KEYS.runtime_version)
    with pytest.raises(BulkConfigError) as raised:
        manager.update_many(
            [
                {"name": "sync-0", "args": [1]},
                {"name": "sync-1", "schedule": "never"},
                {"name": "missing", "args": [1]},
                {"name": "nightly", "args": [1]},
                {"name": "corrupt", "args": [1]},
            ],
            expected_versions={"elsewhere": 1},
        )
    kinds = [
        (type(e).__name__, getattr(e, "entry", getattr(e, "name", None)))
        for e in raised.value.errors
    ]
    assert kinds == [
        ("ConfigError", "nightly"),
        ("ConfigError", "elsewhere"),
        ("ConfigError", "sync-1"),
        ("JobNotFoundError", "missing"),
        ("StoredRecordError", "corrupt"),
    ]
    assert isinstance(raised.value.errors[3], JobNotFoundError)
    assert isinstance(raised.value.errors[4], StoredRecordError)
    assert redis_client.get(KEYS.runtime_version) == version
    assert stored(redis_client, "sync-0")["args"] == []


def test_update_many_with_stale_versions_writes_nothing(
    manager: Manager, redis_client: redis.Redis
) -> None:
    versions = manager.add_many(tenants(3))
    with pytest.raises(BulkConflictError) as raised:
        manager.update_many(
            [{"name": f"sync-{i}", "args": [i]} for i in range(3)],
            expected_versions={"sync-0": versions["sync-0"], "sync-2": 1},
        )
    assert (raised.value.name, raised.value.expected, raised.value.current) == ("sync-2", 1, 3)
    assert raised.value.written == []
    assert "nothing was written" in str(raised.value)
    assert all(stored(redis_client, f"sync-{i}")["args"] == [] for i in range(3))
    manager.update_many(
        [{"name": "sync-0", "args": [5]}], expected_versions={"sync-0": versions["sync-0"]}
    )
    assert stored(redis_client, "sync-0")["args"] == [5]


def test_remove_many_checks_every_name_first(
    layout: str, manager: Manager, redis_client: redis.Redis
) -> None:
    versions = manager.add_many(tenants(4))
    with pytest.raises(BulkConfigError) as raised:
        manager.remove_many(["sync-0", "missing", "nightly", "", "sync-1"])
    assert [str(e) for e in raised.value.errors] == [
        "entry 'nightly': static entries (config or decorator) cannot be removed at runtime; "
        "pause it, or remove it from the code",
        "field 'name': entry names must be non-empty strings, not ''",
        "no entry named 'missing'",
    ]
    with pytest.raises(BulkConflictError):
        manager.remove_many(["sync-0", "sync-1"], expected_versions={"sync-1": 1})
    assert redis_client.hlen(KEYS.runtime_entries) == 4
    removed = manager.remove_many(
        ["sync-2", "missing", "sync-0", "sync-2"],
        missing_ok=True,
        expected_versions={"sync-0": versions["sync-0"]},
    )
    assert removed == ["sync-2", "sync-0"]
    assert [redis_client.zscore(KEYS.runtime_changes, n) for n in removed] == [5.0, 6.0]
    assert sorted(n.decode() for n in redis_client.hkeys(KEYS.runtime_entries)) == [
        "sync-1",
        "sync-3",
    ]
    assert int(redis_client.hget(KEYS.state("sync-2"), "removed") or 0) > 1  # its instant
    assert redis_client.pttl(KEYS.state("sync-2")) > 0


def removal_traces(client: redis.Redis, name: str) -> dict[str, Any]:
    """What a removal leaves of ``name``: its own keys (a TTL or none), its state, and whether
    the runtime keys still hold it."""
    return {
        "ttl": [client.pttl(key) > 0 for key in KEYS.entry_keys(name)],
        "exists": [bool(client.exists(key)) for key in KEYS.entry_keys(name)],
        "state": sorted(k for k in client.hgetall(KEYS.state(name)) if k != b"removed"),
        "removed": client.hget(KEYS.state(name), "removed") is not None,
        "stored": client.hexists(KEYS.runtime_entries, name)
        or client.hexists(KEYS.runtime_since, name)
        or client.hexists(store_module.entry_tags_key(KEYS), name),
        "indexed": client.zrange(store_module.tag_index_key(KEYS), 0, -1),
        "logged": client.zscore(KEYS.runtime_removed, name) is not None,
    }


def test_a_bulk_removal_leaves_what_a_removal_leaves(
    layout: str, manager: Manager, redis_client: redis.Redis
) -> None:
    """``remove_many`` does to each entry what ``remove`` does: its own keys expire after the
    retention (a held-back run goes now), its state says removed, the index forgets it."""
    manager.add_many(tenants(6, tag="a|b"))
    manager.update_many([{"name": f"sync-{i}", "tags": ["a|b", "c"]} for i in range(6)])
    for name in ("sync-0", "sync-1", "sync-2"):
        redis_client.hset(KEYS.state(name), mapping={"hwm": "1", "paused": "1"})
        redis_client.hset(KEYS.pending(name), "1", "owner|1")
        redis_client.set(KEYS.running(name), "task", px=60_000)
        redis_client.set(KEYS.buffered(name), "{}")
        redis_client.lpush(KEYS.history(name), "{}")
    manager.remove("sync-0")
    manager.remove("sync-3")
    assert manager.remove_many(["sync-1", "sync-2", "sync-4", "sync-5"]) == [
        "sync-1",
        "sync-2",
        "sync-4",
        "sync-5",
    ]
    assert removal_traces(redis_client, "sync-1") == removal_traces(redis_client, "sync-0")
    assert removal_traces(redis_client, "sync-4") == removal_traces(redis_client, "sync-3")
    assert removal_traces(redis_client, "sync-0") == {
        "ttl": [True, True, True, False, True],
        "exists": [True, True, True, False, True],
        "state": [b"defined", b"hwm", b"paused"],
        "removed": True,
        "stored": False,
        "indexed": [],
        "logged": True,
    }
    assert [redis_client.zscore(KEYS.runtime_changes, f"sync-{i}") for i in (1, 2, 4, 5)] == [
        15.0,
        16.0,
        17.0,
        18.0,
    ]


def test_remove_by_tag_finds_the_tag_in_tags_only(
    layout: str, manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add_many(
        [
            *tenants(30, tag="tenants"),
            *tenants(5, tag="tenants-eu", start=30),
            {
                "name": "mentions",
                "task": "t",
                "schedule": "every 10 seconds",
                "description": '"tenants"',
                "tags": ["other"],
            },
            {
                "name": "zürich",
                "task": "t",
                "schedule": "every 10 seconds",
                "tags": ["zürich", "tenants"],
            },
        ]
    )
    redis_client.hset(KEYS.runtime_entries, "corrupt", b'{"tags": ["tenants"')
    removed = manager.remove_by_tag("tenants")
    assert removed == sorted([f"sync-{i}" for i in range(30)] + ["zürich"])
    assert manager.remove_by_tag("zürich") == []
    assert sorted(n.decode() for n in redis_client.hkeys(KEYS.runtime_entries)) == sorted(
        [f"sync-{i}" for i in range(30, 35)] + ["mentions", "corrupt"]
    )
    assert manager.remove_by_tag("reports") == []  # the static entry stays
    assert manager.tagged("reports") == (["nightly"], [])


def test_pause_and_resume_by_tag_cover_static_and_runtime_entries(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add_many([*tenants(3, tag="reports"), *tenants(2, tag="other", start=3)])
    paused = manager.pause(tag="reports", note="quarter close")
    assert paused == ["nightly", "sync-0", "sync-1", "sync-2"]
    assert [j.name for j in manager.jobs() if j.paused] == paused
    assert manager.is_paused("sync-1").note == "quarter close"
    assert manager.resume(tag="reports") == paused
    assert not any(job.paused for job in manager.jobs())


def test_clear_removes_every_runtime_entry_in_batches(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add_many(tenants(2300))
    assert manager.clear() == 2300
    assert redis_client.hlen(KEYS.runtime_entries) == 0
    assert int(redis_client.get(KEYS.runtime_version) or 0) == 4600


# -- what a beat replica sees ------------------------------------------------------------------


def test_a_replica_follows_bulk_changes(redis_url: str, clock: FakeClock) -> None:
    app = make_app(redis_url)
    manager = Manager(app, clock=clock)
    publisher = RecordingPublisher()
    scheduler = make_scheduler(redis_url, clock, app=app, publisher=publisher)
    try:
        scheduler.tick()
        manager.add_many([*tenants(40), *tenants(10, tag="eu", start=40)], batch_size=7)
        run_for(scheduler, clock, 12)
        assert {f"sync-{i}" for i in range(50)} <= set(scheduler.entries)
        fired = {o.entry for o in publisher.occurrences}
        assert fired == {f"sync-{i}" for i in range(50)}

        manager.update_many([{"name": f"sync-{i}", "args": [i]} for i in range(5)])
        manager.pause(tag="eu")
        assert len(manager.remove_by_tag("tenants")) == 40
        run_for(scheduler, clock, 2)
        publisher.clear()
        run_for(scheduler, clock, 20)
        assert not {f"sync-{i}" for i in range(40)} & set(scheduler.entries)
        assert {f"sync-{i}" for i in range(40, 50)} <= set(scheduler.entries)
        assert publisher.occurrences == []  # the removed are gone, the rest paused

        manager.resume(tag="eu")
        manager.add_many(tenants(3))  # re-added: afresh
        run_for(scheduler, clock, 12)
        assert {o.entry for o in publisher.occurrences} == {
            f"sync-{i}" for i in [0, 1, 2, *range(40, 50)]
        }
    finally:
        scheduler.close()


# -- schedule add --file ------------------------------------------------------------------------


@pytest.fixture
def cli(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    app = make_app(redis_url)
    monkeypatch.chdir(tmp_path)

    def run(*args: str, stdin: str | None = None) -> Any:
        obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
        return CliRunner().invoke(schedule, list(args), obj=obj, input=stdin)

    yield run
    app.close()


def test_add_file_adds_json_and_yaml_entries(
    cli: Any, redis_client: redis.Redis, tmp_path: Path
) -> None:
    (tmp_path / "entries.json").write_text(json.dumps(tenants(12)))
    (tmp_path / "entries.yaml").write_text(
        "report-acme:\n  task: tasks.report\n  schedule: daily at 09:00\n  tags: [acme]\n"
    )
    result = cli("add", "--file", "entries.json")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "added 12 entries from entries.json: sync-0, sync-1, sync-2, sync-3, sync-4, sync-5, "
        "sync-6, sync-7, sync-8, sync-9 and 2 more"
    )
    assert "tasks not registered in this app (typos?): tasks.sync" in result.stderr
    result = cli("add", "--file", "entries.yaml", "--tag", "import-1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"added": {"report-acme": 13}}
    assert stored(redis_client, "report-acme")["tags"] == ["acme", "import-1"]
    result = cli("add", "--file", "-", "--replace", stdin=json.dumps(tenants(1)))
    assert result.stdout.strip() == "added 1 entry from stdin: sync-0"


@pytest.mark.parametrize(
    ("content", "args", "error"),
    [
        (None, [], "Error: --file: cannot read entries.json: No such file or directory"),
        ("{", [], "Error: --file: entries.json is not valid JSON: "),
        ("3", [], "Error: --file: entries.json must hold a list of entries or an object"),
        (json.dumps(tenants(1)), ["--queue", "q"], "Error: --file: --queue cannot be given"),
        (json.dumps(tenants(1)), ["x"], "Error: --file: NAME cannot be given"),
        (
            json.dumps([*tenants(2), {"name": "bad", "task": "t", "schedule": "nope"}]),
            [],
            "Error: 1 of 3 definitions refused, nothing was written: entry 'bad', "
            "field 'schedule': ",
        ),
    ],
)
def test_add_file_refuses_bad_input_in_one_line_with_exit_2(
    cli: Any,
    redis_client: redis.Redis,
    tmp_path: Path,
    content: str | None,
    args: list[str],
    error: str,
) -> None:
    if content is not None:
        (tmp_path / "entries.json").write_text(content)
    result = cli("add", *args, "--file", "entries.json")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(error)
    assert redis_client.hlen(KEYS.runtime_entries) == 0


def test_add_file_says_yaml_needs_pyyaml(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "entries.yml").write_text("a: {task: t, schedule: every 10 seconds}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    result = cli("add", "--file", "entries.yml")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --file: entries.yml is YAML, which needs PyYAML (pip install pyyaml); "
        "or give the entries as JSON"
    )


def test_add_without_file_still_needs_its_arguments(cli: Any) -> None:
    result = cli("add", "x", "tasks.sync")
    assert result.exit_code == 2
    assert "Missing argument 'SCHEDULE'" in result.stderr


def test_the_store_refuses_a_batch_naming_an_entry_twice(manager: Manager) -> None:
    with pytest.raises(ValueError, match="more than once"):
        manager.store().put_many([("a", "{}", None), ("a", "{}", None)])
    with pytest.raises(ValueError, match="more than once"):
        manager.store().delete_many([("a", None), ("a", None)])


def test_since_is_utc_microseconds(redis_url: str, redis_client: redis.Redis) -> None:
    at = datetime(2026, 3, 2, 10, 0, 0, 250, tzinfo=timezone.utc)
    Manager(make_app(redis_url), clock=lambda: at).add_many(tenants(1))
    assert since_of(redis_client, "sync-0") == [int(at.timestamp()) * 1_000_000 + 250] * 2


def test_the_tag_index_follows_every_write(manager: Manager, redis_client: redis.Redis) -> None:
    manager.add("one", "tasks.sync", "every 10 seconds", tags=["a", "b", "a|b", "%7C"])
    assert manager.tagged("a|b").runtime == ["one"] and manager.tagged("|").runtime == []
    assert manager.tagged("%7C").runtime == ["one"]
    manager.add_many(tenants(2, tag="a"))
    assert manager.tagged("a").runtime == ["one", "sync-0", "sync-1"]
    manager.update("one", tags=["b", "c"])
    manager.update_many([{"name": "sync-0", "tags": ["c"]}])
    manager.add_many(
        [{"name": "sync-1", "task": "t", "schedule": "every 10 seconds"}], replace_existing=True
    )
    assert manager.tagged("a").runtime == []
    assert manager.tagged("c").runtime == ["one", "sync-0"]
    assert manager.tagged("b").runtime == ["one"]
    manager.remove("one")
    assert manager.tagged("b").runtime == [] and manager.tagged("c").runtime == ["sync-0"]
    manager.clear()
    assert redis_client.zcard(store_module.tag_index_key(KEYS)) == 0
    assert redis_client.hlen(store_module.entry_tags_key(KEYS)) == 0


def test_entries_stored_before_the_index_are_indexed_once(
    manager: Manager, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager.add_many(tenants(3, tag="old"))
    # As an earlier version left them: entries, no index, no mark.
    redis_client.delete(
        store_module.tag_index_key(KEYS),
        store_module.entry_tags_key(KEYS),
        store_module.tag_indexed_key(KEYS),
    )
    redis_client.hset(KEYS.runtime_entries, "corrupt", b'{"tags": ["old"')
    redis_client.hset(KEYS.runtime_entries, "odd", json.dumps({"tags": ["old", 3, "50%|x", ""]}))
    monkeypatch.setattr(store_module, "TAG_PAGE", 2)
    assert manager.tagged("old").runtime == ["odd", "sync-0", "sync-1", "sync-2"]
    assert redis_client.get(store_module.tag_indexed_key(KEYS)) == b"1"
    assert redis_client.hget(store_module.entry_tags_key(KEYS), "odd") == b"50%25%7Cx|old"
    assert manager.tagged("50%|x").runtime == ["odd"] and manager.tagged("50%").runtime == []
    assert manager.remove_by_tag("old") == ["odd", "sync-0", "sync-1", "sync-2"]


def test_a_new_store_needs_no_indexing(manager: Manager, redis_client: redis.Redis) -> None:
    manager.add_many(tenants(1))
    assert redis_client.get(store_module.tag_indexed_key(KEYS)) == b"1"


@pytest.mark.parametrize(
    "schedule",
    ["every 10 seconds", "daily at 09:00", "daily at 09:00 in Europe/Berlin", "*/5 * * * *"],
)
def test_a_schedule_string_shared_by_entries_of_other_zones_is_each_ones_own(
    manager: Manager, redis_client: redis.Redis, schedule: str
) -> None:
    zones = [None, "America/New_York", "Asia/Kolkata", None]
    definitions = [
        {"name": f"bulk-{i}", "task": "t", "schedule": schedule, "timezone": zone}
        for i, zone in enumerate(zones)
    ]
    manager.add_many(definitions)
    for i, zone in enumerate(zones):
        manager.add(f"one-{i}", "t", schedule, timezone=zone)
        assert stored(redis_client, f"bulk-{i}") == stored(redis_client, f"one-{i}")
        assert manager.get(f"bulk-{i}").next_run == manager.get(f"one-{i}").next_run


def test_remove_many_wants_a_list_of_names(manager: Manager) -> None:
    manager.add_many(tenants(1))
    with pytest.raises(ConfigError, match="a list of entry names"):
        manager.remove_many("sync-0")
    assert manager.remove_many(iter(["sync-0"])) == ["sync-0"]


def test_an_update_keeps_the_lease_of_a_running_marker(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add("a", "tasks.sync", "every 10 seconds", singleton=True)
    manager.add_many([{"name": "b", "task": "tasks.sync", "schedule": "every 10 seconds"}])
    for name in ("a", "b"):
        redis_client.set(KEYS.running(name), "task-1", px=60_000)
    manager.update("a", args=[1])
    manager.update_many([{"name": "b", "args": [1]}])
    assert 0 < redis_client.pttl(KEYS.running("a")) <= 60_000
    assert 0 < redis_client.pttl(KEYS.running("b")) <= 60_000


def test_a_name_left_in_the_index_without_its_entry_is_not_listed(
    manager: Manager, redis_client: redis.Redis
) -> None:
    manager.add_many(tenants(2))
    redis_client.hdel(KEYS.runtime_entries, "sync-1")  # as an earlier version's removal does
    assert manager.tagged("tenants").runtime == ["sync-0"]
    assert manager.pause(tag="tenants") == ["sync-0"]
    version = redis_client.get(KEYS.runtime_version)
    assert manager.remove_by_tag("tenants") == ["sync-0"]
    assert int(redis_client.get(KEYS.runtime_version) or 0) == int(version or 0) + 1
