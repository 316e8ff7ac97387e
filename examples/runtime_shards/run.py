"""Runtime entries spread over a Redis Cluster (``fork_scheduler_runtime_shards``).

Starts a throwaway 3-master Redis Cluster on loopback, stores ``--entries`` runtime entries
with ``Manager.add_many`` in 12 shards, and prints how many definitions each master holds
(with one shard, every one of them would be on a single master). Then pauses and removes a
tag's entries, which live in every shard, and shows that a Manager configured with another
number of shards is refused, naming the setting, with nothing changed. Takes a few seconds.

    python examples/runtime_shards/run.py [--entries 3000]
"""

from __future__ import annotations

import redis
from celery import Celery

from celery_fork_scheduler import ConfigError, Manager
from celery_fork_scheduler.testing.examples import parse_options
from celery_fork_scheduler.testing.redis_topologies import RedisClusterNodes

SHARDS = 12


def make_app(url: str, shards: int) -> Celery:
    app = Celery("shards_example", broker="memory://", set_as_current=False)
    app.conf.update(
        timezone="UTC",
        fork_scheduler_redis_url=url,
        fork_scheduler_redis_options={"cluster": True},
        fork_scheduler_runtime_shards=shards,
    )
    return app


def definitions_per_master(cluster: RedisClusterNodes) -> list[int]:
    """How many runtime entry definitions each master stores."""
    counts = []
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        try:
            keys = client.scan_iter(match="scheduler:{runtime*}:entries")
            counts.append(sum(int(client.hlen(key)) for key in keys))
        finally:
            client.close()
    return counts


def main() -> int:
    options = parse_options(__doc__, entries=(3000, "runtime entries to store"))
    entries = int(options.entries)
    with RedisClusterNodes(masters=3) as cluster:
        manager = Manager(make_app(cluster.url, SHARDS))
        manager.add_many(
            {
                "name": f"tenant-{i:05d}-report",
                "task": "reports.tenant",
                "schedule": "daily at 09:00",
                "tags": ["eu"] if i % 10 == 0 else ["us"],
            }
            for i in range(entries)
        )
        counts = definitions_per_master(cluster)
        print(f"{entries} runtime entries in {SHARDS} shards; definitions per master: {counts}")
        paused = manager.pause(tag="eu")
        removed = manager.remove_by_tag("eu")
        print(f"tag 'eu': {len(paused)} paused, then {len(removed)} removed, from every shard")
        try:
            Manager(make_app(cluster.url, 1)).jobs()
        except ConfigError as exc:
            print(f"a Manager with 1 shard is refused: {exc}")
        left = len(manager.jobs())
        ok = all(counts) and sum(counts) == entries and left == entries - len(removed)
        print(f"{'OK' if ok else 'FAILED'}: every master holds definitions; {left} entries left")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
