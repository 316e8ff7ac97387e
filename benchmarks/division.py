"""Issue 20: is the work divided among R replicas, or repeated? Measured without contention.

`scaling.py` runs R real `celery beat` processes beside Redis on this machine's 2 cores: from
R = 3 on they, Redis and the draining consumer share 2 cores, so the CPU per publish it
measures grows with the time slicing too. This script takes the cores out of the picture: R
schedulers in one process tick in turn on one fake clock (each tick timed with the process's CPU
clock), with their own Redis connections, real claims, real ownership records and the one-step
publish (claims and broker on one private `redis-server`), so every figure is the replicas'
own work. On a machine with a core per replica, each replica's share is what it would take of
its core; the sum over the replicas against R = 1 says whether R replicas repeat work.

    PYTHONPATH=. .venv/bin/python benchmarks/division.py --n 2000 --replicas 1,2,3,4 --seconds 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import redis
from celery import Celery

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.testing import FakeClock, RedisServer

#: Slot maths in the past of Redis TIME, so that no claim is answered ``early``.
START = "2026-03-02T10:00:00.300+00:00"
#: Fake seconds between two rounds of ticks (every replica ticks once per round).
STEP = 0.25
#: Fake seconds ticked before the measured window: the replicas see each other and settle.
WARM_UP = 10.0


@dataclass(frozen=True)
class Division:
    """One case: R replicas serving N entries every second for ``seconds`` fake seconds."""

    replicas: int
    entries: int
    published: int
    cpu: tuple[float, ...]
    seconds: float

    @property
    def cpu_per_1000(self) -> float:
        return sum(self.cpu) / self.published * 1000

    @property
    def core_share(self) -> float:
        """Each replica's CPU over the window, averaged, in % of a core at real speed (one
        fake second of slots per real second)."""
        return statistics.mean(self.cpu) / self.seconds * 100


def _replica(url: str, clock: FakeClock, entries: int, replica_id: str) -> Scheduler:
    app = Celery("division", set_as_current=False, broker=url)
    app.conf.update(
        timezone="UTC",
        fork_scheduler_redis_url=url,
        beat_schedule={
            f"e{i}": {"task": "division.task", "schedule": every(1).seconds} for i in range(entries)
        },
    )
    backend = RedisBackend.from_url(url, read_settings(app.conf))
    backend.replica_id = replica_id
    return Scheduler(
        app,
        clock=clock,
        backend=backend,
        monotonic=lambda: clock.now.timestamp(),
        exit_on_config_error=False,
    )


def measure(replicas: int, entries: int, seconds: float) -> Division:
    """Tick ``replicas`` schedulers in turn for ``seconds`` fake seconds after a warm-up."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        client.flushall()
        clock = FakeClock(START)
        group = [_replica(server.url, clock, entries, f"replica-{k}") for k in range(replicas)]
        try:
            for _ in range(int(WARM_UP / STEP)):
                clock.advance(STEP)
                for scheduler in group:
                    scheduler.tick()
            client.delete("celery")
            first = clock()
            cpu = [0.0] * replicas
            published = 0
            for _ in range(int(seconds / STEP)):
                clock.advance(STEP)
                for index, scheduler in enumerate(group):
                    started = time.process_time()
                    scheduler.tick()
                    cpu[index] += time.process_time() - started
                published += client.llen("celery")
                client.delete("celery")
            elapsed = (clock() - first) / timedelta(seconds=1)
        finally:
            for scheduler in group:
                scheduler.close()
            client.close()
    return Division(replicas, entries, published, tuple(cpu), elapsed)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=_ints, default=[2000], help="entries, comma-separated")
    parser.add_argument("--replicas", type=_ints, default=[1, 2, 3, 4])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured fake seconds")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if 1 not in args.replicas:
        parser.error("--replicas must include 1 (the ratios are taken against it)")
    columns = [
        "N",
        "R",
        "published",
        "CPU s / 1 000, all replicas",
        "\u00d7 R = 1",
        "CPU per replica (% of a core)",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for entries in args.n:
        runs = [
            {r: measure(r, entries, args.seconds) for r in args.replicas} for _ in range(args.runs)
        ]
        for r in args.replicas:
            cases = [run[r] for run in runs]
            ratio = statistics.median(run[r].cpu_per_1000 / run[1].cpu_per_1000 for run in runs)
            print(
                f"| {entries} | {r} | {statistics.median(c.published for c in cases):.0f} "
                f"| {statistics.median(c.cpu_per_1000 for c in cases):.4f} "
                f"| {ratio:.2f} | {statistics.median(c.core_share for c in cases):.1f} |"
            )


if __name__ == "__main__":
    main()
