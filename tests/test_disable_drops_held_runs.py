"""A write that disables a runtime entry deletes its held-back runs (``buffered``) and marks
its state ``disabled`` (the claim script then refuses new claims to a replica that has not
read the change), on one Redis in the write's own script and on Redis Cluster just after it;
a write that keeps the entry enabled, or disables another, leaves them alone and the mark
goes when the entry is enabled again (adversary round 56, simulator seed 42 with
``--disables``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.store import RuntimeStore, disables, encode_entry
from celery_fork_scheduler.testing.redis_topologies import RedisClusterNodes

KEYS = Keys("r56:")


def definition(enabled: bool, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schema": 1,
        "task": "t",
        "schedule": {"type": "interval", "seconds": 5},
        "enabled": enabled,
        "kwargs": kwargs or {},
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes(masters=3) as nodes:
        yield nodes


def held_runs_after_writes(client: Any) -> dict[str, bool]:
    store = RuntimeStore(client, KEYS)
    for name in ("one", "many", "kept", "nested"):
        store.put(name, definition(True))
        client.set(KEYS.buffered(name), "held")
    store.put("one", definition(False))
    store.put_many(
        [
            ("many", encode_entry("many", definition(False)), None, ""),
            ("kept", encode_entry("kept", definition(True)), None, ""),
            ("nested", encode_entry("nested", definition(True, {"enabled": False})), None, ""),
        ]
    )
    names = ("one", "many", "kept", "nested")
    held = {name: bool(client.exists(KEYS.buffered(name))) for name in names}
    marked = {name for name in names if client.hget(KEYS.state(name), "disabled")}
    assert marked == {"one", "many"}  # the claim script refuses them new claims
    store.put("one", definition(True))  # enabled again: new claims are welcome
    assert not client.hget(KEYS.state("one"), "disabled")
    return held


EXPECTED = {"one": False, "many": False, "kept": True, "nested": True}


def test_on_one_redis(redis_client: redis.Redis) -> None:
    assert held_runs_after_writes(redis_client) == EXPECTED


def test_on_redis_cluster(cluster: RedisClusterNodes) -> None:
    client = RedisCluster.from_url(cluster.url)
    try:
        assert held_runs_after_writes(client) == EXPECTED
    finally:
        client.close()


def test_only_a_top_level_enabled_false_disables() -> None:
    assert disables(encode_entry("a", definition(False)))
    assert not disables(encode_entry("a", definition(True, {"enabled": False})))
    assert not disables(encode_entry("a", {"task": "t", "schedule": 5}))
