"""Adversary round 11: the bulk runtime API (add_many / update_many / remove_many) against the
promises of docs/guarantees.md ("Bad input gets a clear error that names the entry and the
field; nothing already stored is lost or corrupted by it") and docs/manager.md (bulk calls are
all or nothing, and do what the one-by-one calls do). Real Redis (tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import ConfigError, Manager
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.store import StaleVersionError

KEYS = Keys("scheduler:")
DEFINITION = {"task": "tasks.sync", "schedule": "every 10 seconds"}


def make_app(redis_url: str) -> Celery:
    app = Celery("adversary11", broker="memory://", set_as_current=False)
    app.conf.update(timezone="UTC", beat_schedule={}, fork_scheduler_redis_url=redis_url)
    return app


@pytest.fixture
def manager(redis_url: str) -> Manager:
    manager = Manager(make_app(redis_url))
    # "b" is version 1, "a" version 2.
    assert manager.add_many([{"name": "b", **DEFINITION}, {"name": "a", **DEFINITION}]) == {
        "b": 1,
        "a": 2,
    }
    return manager


def stored(client: redis.Redis) -> list[str]:
    return sorted(name.decode() for name in client.hkeys(KEYS.runtime_entries))


def test_remove_many_bad_expected_version_is_refused_before_anything_is_removed(
    manager: Manager, redis_client: redis.Redis
) -> None:
    """A bool given as an expected version (``{"b": True}``; "b" is at version 1) passes the
    Manager's own check (``True == 1``) but not the script's (``tonumber("True")`` is nil). With
    more than one batch, the batch before it removes "a" for good, then the call raises a
    ``BulkConflictError`` saying "b" changed ("version True, now 1") although nothing changed
    it. Bad input must be a ConfigError naming the entry and the field, found before anything
    is written: "a" must still be stored."""
    with pytest.raises(Exception) as caught:
        manager.remove_many(["a", "b"], expected_versions={"b": True}, batch_size=1)
    assert stored(redis_client) == ["a", "b"], f"partial write, then {caught.value!r}"
    assert isinstance(caught.value, ConfigError), repr(caught.value)
    assert "b" in str(caught.value)
    assert "expected_version" in str(caught.value)


@pytest.mark.parametrize("call", ["remove", "update", "remove_many", "update_many"])
def test_non_integer_expected_version_is_a_config_error_naming_the_field(
    manager: Manager, redis_client: redis.Redis, call: str
) -> None:
    """``expected_version="abc"`` (or ``[1]``, ``nan``, ``2**80``) is not validated at all: it
    is sent to Redis as text and comes back as a ``StaleVersionError`` / ``BulkConflictError``
    "entry 'b' changed since it was read (version abc, now 1)", a misleading conflict (nothing
    changed the entry; retrying can never succeed). Bad input should be a ConfigError that
    names the entry and the field (expected_version / expected_versions)."""
    calls: dict[str, Any] = {
        "remove": lambda: manager.remove("b", expected_version="abc"),
        "update": lambda: manager.update("b", expected_version="abc", description="x"),
        "remove_many": lambda: manager.remove_many(["b"], expected_versions={"b": "abc"}),
        "update_many": lambda: manager.update_many(
            [{"name": "b", "description": "x"}], expected_versions={"b": "abc"}
        ),
    }
    with pytest.raises(ConfigError) as caught:
        calls[call]()
    assert "'b'" in str(caught.value)
    assert "expected_version" in str(caught.value)
    assert stored(redis_client) == ["a", "b"]


@pytest.mark.parametrize("expected", ["1", None])
def test_remove_and_remove_many_agree_on_an_expected_version(
    manager: Manager, redis_client: redis.Redis, expected: object
) -> None:
    """The bulk call should do what the one-by-one call does. ``remove("b",
    expected_version="1")`` (or ``None``) removes "b" (version 1), but ``remove_many(["b"],
    expected_versions={"b": "1"})`` (or ``None``) raises ``BulkConflictError`` "'b' (version 1,
    now 1)" / "(version None, now 1)": a conflict between two equal versions. Either both
    refuse the value (a ConfigError) or both remove the entry."""

    def outcome(call: Any) -> str:
        try:
            call()
        except StaleVersionError:
            return "conflict"
        except ConfigError:
            return "refused"
        return "removed"

    one = outcome(lambda: manager.remove("b", expected_version=expected))
    manager.add("b", "tasks.sync", "every 10 seconds", replace_existing=True)
    version = manager.get("b").version
    many = outcome(
        lambda: manager.remove_many(
            ["b"], expected_versions={"b": str(version) if expected is not None else None}
        )
    )
    assert one == many, f"remove: {one}, remove_many: {many}"
