"""The bulk runtime API against one-by-one calls, in one run (issue 20, item 1).

    .venv/bin/python benchmarks/bulk.py                 # 100 000 entries, 10 000 tagged, 3 runs
    .venv/bin/python benchmarks/bulk.py --entries 20000 --tagged 2000 --runs 1   # quicker

Starts a private ``redis-server`` (``celery_fork_scheduler.testing.RedisServer``) and prints,
medians of ``--runs`` (min-max beside them):

- ``Manager.add``, one call per entry (``--one-by-one`` entries): entries/s;
- ``Manager.add_many`` of ``--entries`` entries (the first ``--tagged`` of them tagged
  :data:`TAG` too): entries/s, validation included; and per CPU second of this process and
  the redis-server together (what an otherwise idle machine gives: the two work in turn);
- ``Manager.remove_by_tag`` of ``--tagged`` of them (the others stay): seconds;
- ``Manager.pause(tag=)`` of the same: seconds;
- the Redis memory of the tag index per entry (bytes; the entries carry one or two tags).

Goals (issue 20): ``add_many`` >= 20 000 entries/s, ``remove_by_tag`` of 10 000 <= 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from celery_fork_scheduler import Manager
from celery_fork_scheduler.testing import RedisServer

TAG = "tenant-batch-7"


def definitions(count: int, tagged: int) -> list[dict[str, Any]]:
    """``count`` tenant entries, as a multi-tenant product has them; the first ``tagged``
    carry :data:`TAG` besides their own tags."""
    return [
        {
            "name": f"tenant-{i}:sync",
            "task": "proj.sync",
            "schedule": f"every {5 + i % 55} minutes",
            "args": [i],
            "kwargs": {"integration": "crm"},
            "tags": ["tenants", TAG] if i < tagged else ["tenants"],
            "description": f"sync of tenant {i}",
        }
        for i in range(count)
    ]


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the redis-server has used (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def figure(values: list[float], unit: str, digits: int = 0) -> str:
    median = statistics.median(values)
    spread = f"{min(values):,.{digits}f}-{max(values):,.{digits}f}" if len(values) > 1 else "-"
    return f"{median:,.{digits}f} {unit}  (min-max {spread})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--tagged", type=int, default=10_000)
    parser.add_argument("--one-by-one", type=int, default=3_000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    batch = definitions(options.entries, options.tagged)
    rates: dict[str, list[float]] = {
        "add": [],
        "add_many": [],
        "remove": [],
        "pause": [],
        "index": [],
        "cpu": [],
    }
    with RedisServer() as server:
        app = Celery("bench_bulk", broker="memory://", set_as_current=False)
        app.conf.update(timezone="UTC", fork_scheduler_redis_url=server.url)
        manager = Manager(app)
        client = redis.Redis.from_url(server.url)
        for run in range(options.runs):
            client.flushall()
            few = batch[: options.one_by_one]
            seconds = timed(
                lambda few=few: [
                    manager.add(d["name"], d["task"], d["schedule"], **_policies(d)) for d in few
                ]
            )
            rates["add"].append(len(few) / seconds)
            client.flushall()
            cpu = time.process_time(), redis_cpu(client)
            rates["add_many"].append(len(batch) / timed(lambda: manager.add_many(batch)))
            used = time.process_time() - cpu[0] + redis_cpu(client) - cpu[1]
            rates["cpu"].append(len(batch) / used)
            assert client.hlen("scheduler:{runtime}:entries") == len(batch)
            index = sum(
                int(client.memory_usage(key, samples=0) or 0)
                for key in ("scheduler:{runtime}:tag-index", "scheduler:{runtime}:entry-tags")
            )
            rates["index"].append(index / len(batch))
            rates["pause"].append(timed(lambda: manager.pause(tag=TAG)))
            start = time.perf_counter()
            removed = manager.remove_by_tag(TAG)
            rates["remove"].append(time.perf_counter() - start)
            assert len(removed) == options.tagged
            print(
                f"run {run + 1}: add {rates['add'][-1]:,.0f}/s, add_many "
                f"{rates['add_many'][-1]:,.0f}/s ({rates['cpu'][-1]:,.0f} per CPU second), "
                f"pause(tag=) {rates['pause'][-1]:.3f} s, "
                f"remove_by_tag {rates['remove'][-1]:.3f} s",
                flush=True,
            )
        client.close()
    print()
    print(f"{'Manager.add, one per entry':<44} {figure(rates['add'], 'entries/s')}")
    print(
        f"{f'Manager.add_many of {options.entries:,}':<44} {figure(rates['add_many'], 'entries/s')}"
    )
    print(
        f"{'  the same, per CPU second (client + Redis)':<44} {figure(rates['cpu'], 'entries/s')}"
    )
    print(
        f"{f'Manager.remove_by_tag of {options.tagged:,} (of {options.entries:,})':<44} "
        f"{figure(rates['remove'], 's', 3)}"
    )
    print(f"{f'Manager.pause(tag=) of {options.tagged:,}':<44} {figure(rates['pause'], 's', 3)}")
    print(f"{'Redis bytes per entry, tag index':<44} {figure(rates['index'], 'B')}")


def _policies(definition: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in definition.items() if k not in ("name", "task", "schedule")}


if __name__ == "__main__":
    main()
