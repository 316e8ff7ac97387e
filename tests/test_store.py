"""The runtime store in Redis: versions, changes since a version, pause state, bad JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import replica_helpers
from celery import Celery
from replica_helpers import store_raw

from celery_fork_scheduler import ForkSchedulerError, Manager, every
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.store import RuntimeStore, StaleVersionError, StoredEntry
from celery_fork_scheduler.testing import FakeClock

START = "2026-03-02T10:00:00.300+00:00"
KEYS = Keys("scheduler:")
ENTRY = {"schema": 1, "task": "t", "schedule": {"type": "interval"}}


@pytest.fixture
def store(redis_client: redis.Redis) -> RuntimeStore:
    return RuntimeStore(redis_client, KEYS)


def corrupt(client: redis.Redis, name: str, raw: bytes = b"{not json") -> None:
    """Write an undecodable runtime entry the way a broken writer would, version included."""
    store_raw(client, name, raw)


# -- versions ----------------------------------------------------------------------------------


def test_every_write_gets_a_higher_version(store: RuntimeStore) -> None:
    assert store.version() == 0
    first = store.put("a", ENTRY)
    second = store.put("b", ENTRY)
    third = store.put("a", {**ENTRY, "task": "u"})
    assert first < second < third
    assert store.version() == third
    stored = store.get("a")
    assert stored == StoredEntry("a", {**ENTRY, "task": "u"}, third)


def test_a_removal_also_gets_a_higher_version(store: RuntimeStore) -> None:
    written = store.put("a", ENTRY)
    assert store.delete("a") is True
    assert store.version() > written
    assert store.get("a") is None


def test_removing_an_entry_that_is_not_there_returns_false(store: RuntimeStore) -> None:
    assert store.delete("ghost") is False
    assert store.version() == 0


def test_expected_version_zero_means_the_entry_must_be_new(store: RuntimeStore) -> None:
    version = store.put("a", ENTRY, expected_version=0)
    with pytest.raises(StaleVersionError) as raised:
        store.put("a", {**ENTRY, "task": "other"}, expected_version=0)
    assert (raised.value.name, raised.value.expected, raised.value.current) == ("a", 0, version)
    assert isinstance(raised.value, ForkSchedulerError)
    stored = store.get("a")
    assert stored is not None and stored.data["task"] == "t"


def test_a_removed_entry_may_be_added_again_as_new(store: RuntimeStore) -> None:
    store.put("a", ENTRY)
    store.delete("a")
    assert store.put("a", ENTRY, expected_version=0) > 0


def test_a_write_with_an_old_version_is_refused(store: RuntimeStore) -> None:
    read = store.put("a", ENTRY)
    store.put("a", {**ENTRY, "task": "newer"})
    with pytest.raises(StaleVersionError, match="changed since it was read"):
        store.put("a", {**ENTRY, "task": "older"}, expected_version=read)
    with pytest.raises(StaleVersionError):
        store.delete("a", expected_version=read)
    stored = store.get("a")
    assert stored is not None and stored.data["task"] == "newer"


# -- changes since a version ---------------------------------------------------------------------


def test_changes_since_returns_only_what_changed_after_that_version(store: RuntimeStore) -> None:
    store.put("a", ENTRY)
    seen = store.put("b", ENTRY)
    store.delete("a")
    latest = store.put("c", ENTRY)

    changes = store.changes_since(seen)
    assert changes.version == latest
    assert sorted(changes.changed) == ["c"]
    assert changes.removed == ["a"]

    everything = store.changes_since(0)
    assert sorted(everything.changed) == ["b", "c"]
    assert everything.removed == ["a"]


def test_changes_since_the_latest_version_is_empty(store: RuntimeStore) -> None:
    store.put("a", ENTRY)
    latest = store.put("b", ENTRY)
    changes = store.changes_since(latest)
    assert (changes.version, changes.changed, changes.removed) == (latest, {}, [])


def test_an_entry_changed_twice_appears_once_with_its_latest_version(
    store: RuntimeStore,
) -> None:
    store.put("a", ENTRY)
    latest = store.put("a", {**ENTRY, "task": "second"})
    changes = store.changes_since(0)
    item = changes.changed["a"]
    assert isinstance(item, StoredEntry)
    assert (item.version, item.data["task"]) == (latest, "second")


def test_corrupted_json_comes_back_as_bytes(store: RuntimeStore, redis_client: redis.Redis) -> None:
    store.put("good", ENTRY)
    corrupt(redis_client, "broken")
    _, stored = store.all()
    assert stored["broken"] == b"{not json"
    assert isinstance(stored["good"], StoredEntry)
    assert store.changes_since(0).changed["broken"] == b"{not json"


# -- pause state ----------------------------------------------------------------------------


def test_pause_state_carries_the_note_and_time_and_resume_clears_it(
    store: RuntimeStore,
) -> None:
    clock = FakeClock(START)
    store.pause(["a", "b"], "deploy by alice", at=clock())
    states = store.pause_states(["a", "b", "c"])
    assert states["a"].paused and states["b"].paused
    assert (states["a"].note, states["a"].since) == ("deploy by alice", clock())
    assert not states["c"].paused
    store.resume(["a"])
    states = store.pause_states(["a", "b"])
    assert not states["a"].paused
    assert states["b"].paused


def test_resume_keeps_the_counters_of_the_entry(
    store: RuntimeStore, redis_client: redis.Redis
) -> None:
    redis_client.hset(KEYS.state("a"), mapping={"runs": 7, "hwm": 123})
    store.pause(["a"])
    store.resume(["a"])
    assert store.states(["a"])["a"] == {"runs": "7", "hwm": "123"}


# -- a bad stored entry in beat ----------------------------------------------------------------


def make_app(redis_url: str) -> Celery:
    static = {"static": {"task": "t", "schedule": every(1).seconds}}
    return replica_helpers.make_app(redis_url, static, main="store_tests")


class Beat(replica_helpers.Beat):
    """One scheduler on the test Redis, its clocks and what it published."""

    def __init__(self, redis_url: str, clock: FakeClock) -> None:
        super().__init__(redis_url, clock, make_app(redis_url), f"store-test-{id(self)}")


@pytest.fixture
def beats(redis_url: str) -> Iterator[list[Beat]]:
    made: list[Beat] = []
    yield made
    for beat in made:
        beat.scheduler.close()


def runtime(redis_url: str, name: str, clock: FakeClock | None = None, **definition: Any) -> None:
    """Add a runtime entry with a Manager on ``clock`` (a running beat's, so that what it
    promises is on the beat's time)."""
    Manager(make_app(redis_url), clock=clock).add(name, "t", every(1).seconds, **definition)


def run_beside_a_corrupted_entry(
    redis_url: str,
    redis_client: redis.Redis,
    beats: list[Beat],
    name: str,
    seconds: int,
    raw: bytes = b"{not json",
) -> Beat:
    """A beat runs ``seconds`` with a good runtime entry "good" and a corrupted one, ``name``:
    it skips ``name`` and fires "good" every second."""
    runtime(redis_url, "good")
    corrupt(redis_client, name, raw)
    beat = Beat(redis_url, FakeClock(START))
    beats.append(beat)
    beat.run_for(seconds)
    assert name not in beat.scheduler.entries
    assert len(beat.publisher.fired("good")) == seconds
    return beat


def test_beat_skips_a_corrupted_entry_naming_it_and_fires_the_others(
    redis_url: str,
    redis_client: redis.Redis,
    beats: list[Beat],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        beat = run_beside_a_corrupted_entry(redis_url, redis_client, beats, "broken-entry", 3)
    assert len(beat.publisher.fired("static")) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "'broken-entry'" in errors[0]
    assert "cannot be decoded" in errors[0]


def test_beat_skips_an_entry_corrupted_while_it_runs_and_says_so_once(
    redis_url: str,
    redis_client: redis.Redis,
    beats: list[Beat],
    caplog: pytest.LogCaptureFixture,
) -> None:
    beat = Beat(redis_url, FakeClock(START))
    beats.append(beat)
    beat.run_for(1)
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        corrupt(redis_client, "late-broken", b'{"schema": 1, "task": ')
        runtime(redis_url, "late-good", beat.clock)
        beat.run_for(5)
    assert "late-broken" not in beat.scheduler.entries
    assert len(beat.publisher.fired("late-good")) >= 4
    assert len(beat.publisher.fired("static")) == 6
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert ["'late-broken'" in message for message in errors] == [True]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"schema": 99, "task": "t", "schedule": 5}, "schema", id="unknown-schema"),
        pytest.param({"schema": 1, "task": "t", "schedule": "*/61 * * * *"}, "schedule", id="bad"),
        pytest.param(["not", "an", "object"], "not a JSON object", id="json-list"),
    ],
)
def test_beat_skips_a_stored_entry_it_cannot_use_naming_it(
    redis_url: str,
    redis_client: redis.Redis,
    beats: list[Beat],
    caplog: pytest.LogCaptureFixture,
    data: Any,
    message: str,
) -> None:
    raw = json.dumps(data).encode()
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        run_beside_a_corrupted_entry(redis_url, redis_client, beats, "unusable", 2, raw)
    assert "'unusable'" in caplog.text
    assert message in caplog.text


def test_the_manager_lists_the_other_entries_when_one_is_corrupted(
    redis_url: str, redis_client: redis.Redis
) -> None:
    runtime(redis_url, "good")
    corrupt(redis_client, "broken")
    manager = Manager(make_app(redis_url))
    assert [job.name for job in manager.jobs()] == ["good", "static"]
    assert manager.clear() == 2
    assert redis_client.hlen(KEYS.runtime_entries) == 0


def test_the_manager_reports_a_corrupted_entry_as_a_config_error_naming_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    from celery_fork_scheduler import ConfigError

    corrupt(redis_client, "broken")
    with pytest.raises(ConfigError, match="'broken'"):
        Manager(make_app(redis_url)).get("broken")


def test_versions_asked_ahead_survive_a_script_cache_flushed_meanwhile(
    store: RuntimeStore, redis_client: redis.Redis
) -> None:
    """``add_many`` asks for its names' versions before validating and reads them after; an
    operator's ``SCRIPT FLUSH`` (or a failover) in between answers NOSCRIPT: the versions are
    asked again, not raised as a raw Redis error (adversary round 11)."""
    written = store.put("a", ENTRY)
    real_load = store.client.script_load
    flushed: list[bool] = []

    def load_then_flush(script: str) -> Any:
        sha = real_load(script)
        if not flushed:  # once: between the load and the ask
            flushed.append(True)
            redis_client.script_flush()
        return sha

    store.client.script_load = load_then_flush  # type: ignore[method-assign]
    with store.versions_ahead(["a", "missing"]) as read:
        assert read() == {"a": written, "missing": None}
    assert redis_client.ping()
