"""Issue 20: is the work divided among R replicas, or repeated? Measured without contention.

`scaling.py` runs R real `celery beat` processes beside Redis on this machine's 2 cores: from
R = 3 on they, Redis and the draining consumer share 2 cores, so the CPU per publish it
measures grows with the time slicing too. This script takes the cores out of the picture: R
schedulers in one process share one fake clock, with their own Redis connections, real claims,
real ownership records and the one-step publish (claims and broker on one private
`redis-server`). Each replica ticks when it asked to be woken, as `celery beat` does (the clock
jumps to the earliest wake-up; every tick is timed with the process's CPU clock, which counts
the replica's claim thread too), so every figure is the replicas' own work. On a machine with
a core per replica, each replica's share is what it would take of its core; the sum over the
replicas against R = 1 says whether R replicas repeat work.

    PYTHONPATH=. .venv/bin/python benchmarks/division.py --n 2000 --replicas 1,2,3,4 --seconds 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from celery import Celery

from celery_fork_scheduler import Scheduler, every
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.testing import FakeClock, RedisServer

#: Slot maths in the past of Redis TIME, so that no claim is answered ``early``.
START = "2026-03-02T10:00:00.300+00:00"
#: Fake seconds before the measured window: the replicas see each other and settle.
WARM_UP = 10.0
#: The shortest fake sleep between two ticks of a replica (a tick that asks for none, while
#: it reads its entries, is ticked again this much later: fake time must move).
SHORTEST_SLEEP = 0.01
#: The longest (``beat_max_loop_interval`` is longer; runtime entries bound it by the refresh).
LONGEST_SLEEP = 5.0


@dataclass(frozen=True)
class Division:
    """One case: R replicas serving N entries every second for ``seconds`` fake seconds."""

    replicas: int
    entries: int
    published: int
    cpu: tuple[float, ...]
    ticks: tuple[int, ...]
    seconds: float

    @property
    def cpu_per_1000(self) -> float:
        return sum(self.cpu) / self.published * 1000

    @property
    def core_share(self) -> float:
        """Each replica's CPU over the window, averaged, in % of a core at real speed (one
        fake second of slots per real second)."""
        return statistics.mean(self.cpu) / self.seconds * 100

    @property
    def ticks_per_second(self) -> float:
        """Each replica's ticks per fake second, averaged over the replicas."""
        return statistics.mean(self.ticks) / self.seconds


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
    """Run ``replicas`` schedulers, each ticked when it asked to be woken, for ``seconds``
    fake seconds after a warm-up; count what reached the broker's queue."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        client.flushall()
        clock = FakeClock(START)
        group = [_replica(server.url, clock, entries, f"replica-{k}") for k in range(replicas)]
        wake = [clock().timestamp()] * replicas
        cpu = [0.0] * replicas
        ticks = [0] * replicas
        published = 0
        warm_until = clock().timestamp() + WARM_UP
        window: tuple[float, float] | None = None
        try:
            while window is None or clock().timestamp() < window[1]:
                now = clock().timestamp()
                if min(wake) > now:
                    clock.advance(min(wake) - now)
                    now = clock().timestamp()
                if window is None and now >= warm_until:
                    client.delete("celery")
                    window = (now, now + seconds)
                for index, scheduler in enumerate(group):
                    if wake[index] > now:
                        continue
                    started = time.process_time()
                    sleep = scheduler.tick()
                    if window is not None:
                        cpu[index] += time.process_time() - started
                        ticks[index] += 1
                    wake[index] = now + min(max(sleep, SHORTEST_SLEEP), LONGEST_SLEEP)
                if window is not None:
                    published += client.llen("celery")
                    client.delete("celery")
            elapsed = seconds if window is None else clock().timestamp() - window[0]
        finally:
            for scheduler in group:
                scheduler.close()
            client.close()
    return Division(replicas, entries, published, tuple(cpu), tuple(ticks), elapsed)


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
        "ticks per replica per second",
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
                f"| {ratio:.2f} | {statistics.median(c.core_share for c in cases):.1f} "
                f"| {statistics.median(c.ticks_per_second for c in cases):.2f} |"
            )


if __name__ == "__main__":
    main()
