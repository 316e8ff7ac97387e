"""Real `celery beat -S fork` replicas claiming on Redis Cluster and on Redis Sentinel.

The broker is a plain redis-server of its own (the session's); only the claims go to the
topology under test. Every published message is counted at the broker (no worker consumes it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler import every
from celery_fork_scheduler.testing import CeleryProcess, wait_until
from celery_fork_scheduler.testing.redis_topologies import RedisClusterNodes, RedisSentinelGroup

from .conftest import dump_logs
from .harness import Fires, broker_fires, write_project

pytestmark = pytest.mark.e2e

ENTRIES = 50
REPLICAS = 3
#: Slots this close to the start (all replicas up) or to the end of a run are not expected.
MARGIN = timedelta(seconds=3)
#: Misses allowed around a Sentinel failover: from the `SENTINEL FAILOVER` command until this
#: long after the old master was turned into a replica (which closes the connections the
#: replicas still held to it, so that they reconnect through the sentinels).
FAILOVER_GRACE_AFTER_DEMOTION = timedelta(seconds=5)

PROJECT_BODY = f"""
app.conf.fork_scheduler_redis_url = os.environ["TEST_CLAIMS_URL"]
app.conf.fork_scheduler_redis_options = json.loads(os.environ["TEST_CLAIMS_OPTIONS"])
app.conf.fork_scheduler_wait_replicas = int(os.environ.get("TEST_WAIT_REPLICAS", "0"))
app.conf.beat_schedule = {{
    f"entry-{{i:02}}": {{"task": "record", "schedule": every(1).seconds}}
    for i in range({ENTRIES})
}}
"""


def now() -> datetime:
    return datetime.now(timezone.utc)


def start_replicas(
    workdir: Path, env: dict[str, str], processes: list[CeleryProcess]
) -> list[CeleryProcess]:
    module = write_project(workdir, PROJECT_BODY)
    replicas = [
        CeleryProcess.beat(module, cwd=workdir, workdir=workdir, name=f"beat-{i}", env=env)
        for i in range(REPLICAS)
    ]
    processes.extend(replicas)
    for replica in replicas:
        replica.start()
    for replica in replicas:

        def started(replica: CeleryProcess = replica) -> bool:
            return "fork scheduler: backend" in replica.log() or not replica.alive()

        wait_until(started, timeout=120, what=f"{replica.log_path.name} to start")
        assert replica.alive(), dump_logs(processes)
    return replicas


def expected(
    start: datetime, end: datetime, *, hole: tuple[datetime, datetime] | None = None
) -> dict[str, Iterable[datetime]]:
    slots = [
        slot
        for slot in every(1).seconds.slots(start, end)
        if hole is None or not hole[0] <= slot <= hole[1]
    ]
    return {f"entry-{i:02}": slots for i in range(ENTRIES)}


def stop_all(processes: list[CeleryProcess]) -> None:
    """Stop every replica, after checking that none of them died during the run."""
    assert all(process.alive() for process in processes), dump_logs(processes)
    for process in processes:
        process.stop()


def duplicated(fires: Fires) -> dict[str, list[str]]:
    return {
        entry: sorted(slot for slot, count in counter.items() if count > 1)
        for entry, counter in fires.counts.items()
        if any(count > 1 for count in counter.values())
    }


def check(
    fires: Fires, wanted: dict[str, Iterable[datetime]], processes: list[CeleryProcess]
) -> None:
    assert fires.duplicates() == 0, f"duplicates: {duplicated(fires)}"
    missed = fires.missed(wanted)
    assert missed == {}, f"missed {sum(map(len, missed.values()))}: {missed}"


# -- Redis Cluster ------------------------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes(masters=3) as nodes:
        yield nodes


def test_replicas_claiming_on_a_redis_cluster_publish_each_slot_once(
    redis_url: str, cluster: RedisClusterNodes, workdir: Path, processes: list[CeleryProcess]
) -> None:
    env = {
        "TEST_BROKER_URL": redis_url,
        "TEST_CLAIMS_URL": cluster.url,
        "TEST_CLAIMS_OPTIONS": json.dumps({"cluster": True}),
    }
    start_replicas(workdir, env, processes)
    start = now()
    time.sleep(25)
    end = now()
    stop_all(processes)

    check(
        broker_fires(redis.Redis.from_url(redis_url)),
        expected(start + MARGIN, end - MARGIN),
        processes,
    )
    # The claims really went to the cluster, spread over its nodes.
    per_node = []
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        per_node.append(len(list(client.scan_iter("scheduler:*:state"))))
        client.close()
    assert sum(per_node) == ENTRIES and all(per_node), per_node


# -- Sentinel -----------------------------------------------------------------------------------


@pytest.fixture
def sentinel_group() -> Iterator[RedisSentinelGroup]:
    with RedisSentinelGroup(replicas=1, sentinels=3) as group:
        yield group


def test_replicas_claiming_through_sentinel_survive_a_failover(
    redis_url: str,
    sentinel_group: RedisSentinelGroup,
    workdir: Path,
    processes: list[CeleryProcess],
) -> None:
    env = {
        "TEST_BROKER_URL": redis_url,
        "TEST_CLAIMS_URL": sentinel_group.url,
        "TEST_CLAIMS_OPTIONS": json.dumps({"master_name": sentinel_group.master_name}),
        # A claim must reach the Redis replica: a demoted master confirms none, so no replica
        # can win a slot there after the failover.
        "TEST_WAIT_REPLICAS": "1",
    }
    start_replicas(workdir, env, processes)
    start = now()
    time.sleep(12)
    old = sentinel_group.master_address()
    failover_started = now()
    new = sentinel_group.failover()
    switched = now()
    sentinel_group.wait_old_master_demoted(old)
    demoted = now()
    time.sleep(12)
    end = now()
    stop_all(processes)

    hole = (failover_started, demoted + FAILOVER_GRACE_AFTER_DEMOTION)
    fires = broker_fires(redis.Redis.from_url(redis_url))
    timings = (
        f"failover {failover_started:%T.%f} switched {switched:%T.%f} "
        f"(+{(switched - failover_started).total_seconds():.1f} s) demoted {demoted:%T.%f} "
        f"(+{(demoted - failover_started).total_seconds():.1f} s)"
    )
    print(timings)
    assert new != old
    missed = fires.missed(expected(start + MARGIN, end - MARGIN, hole=hole))
    assert missed == {}, f"{timings}; missed {sum(map(len, missed.values()))}: {missed}"
    # After the failover the claims are on the new master.
    client = redis.Redis(host=new[0], port=new[1])
    assert client.exists("scheduler:{entry-00}:state"), timings
    client.close()
    assert fires.duplicates() == 0, f"duplicates across the failover: {duplicated(fires)}"
