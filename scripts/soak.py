#!/usr/bin/env python
"""Soak: N `celery beat -S fork` replicas x 1 000 entries every second, with random faults.

Not a CI test. Two private redis-servers: one is the broker (counted here, never faulted), the
other holds the claims (``fork_scheduler_redis_url``) and takes the Redis faults. Every ~30-90 s
(seeded) one fault:

- ``kill``     SIGKILL a replica and start it again at once;
- ``stop``     SIGSTOP a replica for 5-15 s, then SIGCONT;
- ``restart``  stop the claims Redis for 1-4 s and start it again EMPTY (no persistence);
- ``pause``    ``CLIENT PAUSE 5000 ALL`` on the claims Redis.

No worker: this script consumes the broker queue itself (RPOP in batches every 0.25 s) into
per-second counters, so memory stays bounded whatever the duration. At the end it prints slots
expected, received, duplicated and missed, the misses split into those inside a window the docs
state for a fault (docs/guarantees.md) and those outside any (which should be 0).

    .venv/bin/python scripts/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery_fork_scheduler.ids import ENTRY_HEADER, SLOT_HEADER
from celery_fork_scheduler.testing import CeleryProcess, RedisServer, wait_until

PROJECT = """
import os

from celery import Celery

from celery_fork_scheduler import every

app = Celery("soak", broker=os.environ["SOAK_BROKER_URL"])
app.conf.update(
    timezone="UTC",
    beat_max_loop_interval=1,
    broker_connection_retry_on_startup=True,
    fork_scheduler_redis_url=os.environ["SOAK_CLAIMS_URL"],
)
app.conf.beat_schedule = {{
    f"e-{{i:04}}": {{"task": "soak.noop", "schedule": every(1).seconds}} for i in range({entries})
}}
"""

#: Grace (fork_scheduler_catchup_grace) and claim lease, the defaults the docs state.
GRACE = 5.0
LEASE = 10.0
#: Stated miss windows (docs/guarantees.md). A paused replica: none (the others are healthy).
#: A killed replica: at most one publish batch it had fenced (KILL_ALLOWANCE slots, due within
#: the catch-up grace before the kill). Claims Redis restarted: from one second before the stop
#: (slots due but not yet claimed) until the restart plus one retry (1 s) and slack; slots missed
#: meanwhile follow the catch-up rules. CLIENT PAUSE: the pause plus the catch-up grace.
RESTART_AFTER = 2.0
KILL_ALLOWANCE = 100
PAUSE_MS = 5000
#: Slots this close to the start (replicas coming up) or to the end are not expected.
HEAD = 5.0
TAIL = 3.0
#: Quiet time after the last fault, so that a slot orphaned by a kill is taken over (lease).
SETTLE = LEASE + 3.0


@dataclass
class Fault:
    kind: str
    at: float
    detail: str
    window: tuple[float, float] | None = None
    #: How many misses the window allows (None: any).
    allowance: int | None = None


@dataclass
class Counter:
    """Messages per (second, entry): a bytearray of ``entries`` per second of slots."""

    entries: int
    per_second: dict[int, bytearray] = field(default_factory=dict)
    #: Per second of slots, the publisher (index into ``origins``) of each entry's first message.
    first_origin: dict[int, bytearray] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    #: The first duplicates: (slot second, entry index, first publisher, this publisher, seen at).
    duplicates: list[tuple[int, int, str, str, float]] = field(default_factory=list)
    messages: int = 0
    foreign: int = 0

    def origin_index(self, origin: str) -> int:
        if origin not in self.origins:
            self.origins.append(origin)
        return min(255, self.origins.index(origin))

    def add(self, raw: bytes) -> None:
        headers = json.loads(raw)["headers"]
        self.messages += 1
        name, slot = headers.get(ENTRY_HEADER), headers.get(SLOT_HEADER)
        if not name or not slot or not name.startswith("e-"):
            self.foreign += 1
            return
        second = int(datetime.fromisoformat(slot).timestamp())
        row = self.per_second.get(second)
        if row is None:
            row = self.per_second[second] = bytearray(self.entries)
            self.first_origin[second] = bytearray(self.entries)
        index = int(name[2:])
        origin = self.origin_index(str(headers.get("origin", "?")))
        if row[index] == 0:
            self.first_origin[second][index] = origin
        elif len(self.duplicates) < 100_000:
            first = self.origins[self.first_origin[second][index]]
            self.duplicates.append((second, index, first, self.origins[origin], time.time()))
        row[index] = min(255, row[index] + 1)


def drain(client: redis.Redis, counter: Counter, batch: int = 2000) -> int:
    taken = 0
    while True:
        raws = client.rpop("celery", batch)
        if not raws:
            return taken
        for raw in raws:
            counter.add(raw)
        taken += len(raws)


def taken_from_window(covering: list[Fault], left: dict[int, int | None]) -> bool:
    """Count one miss against the first window covering it that still allows one."""
    for fault in covering:
        allowance = left[id(fault)]
        if allowance is None:
            return True
        if allowance > 0:
            left[id(fault)] = allowance - 1
            return True
    return False


def print_duplicates(
    counter: Counter, faults: list[Fault], publishers: dict[int, str], start: float
) -> None:
    """Group the duplicates by slot second and publisher pair, with the fault just before."""

    def replica(origin: str) -> str:
        pid = origin.split("@")[0].removeprefix("gen")
        return publishers.get(int(pid), origin) if pid.isdigit() else origin

    groups: dict[tuple[int, str, str], list[tuple[int, float]]] = {}
    for second, index, first, again, seen in counter.duplicates:
        groups.setdefault((second, replica(first), replica(again)), []).append((index, seen))
    print("  duplicates (slot second from the start, first publisher -> second publisher):")
    for (second, first, again), items in sorted(groups.items())[:60]:
        before = [f for f in faults if f.at <= second + 1]
        fault = f"{before[-1].kind} at {before[-1].at - start:.1f} s" if before else "no fault"
        seen = min(s for _, s in items) - start
        print(
            f"    slot {second - start:7.1f} s: {len(items):4} entries, {first} -> {again}, "
            f"seen at {seen:.1f} s, after {fault}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fault-every",
        type=float,
        nargs=2,
        default=(30.0, 90.0),
        metavar=("MIN", "MAX"),
        help="seconds between faults (uniform)",
    )
    parser.add_argument(
        "--faults",
        default="kill,stop,restart,pause",
        help="comma-separated fault kinds to draw from (default: all four)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    kinds = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
    unknown = set(kinds) - {"kill", "stop", "restart", "pause"}
    if unknown or not kinds:
        parser.error(f"--faults: unknown kinds {sorted(unknown)} (use kill, stop, restart, pause)")
    workdir = Path(tempfile.mkdtemp(prefix="fork-soak-"))
    (workdir / "soak.py").write_text(textwrap.dedent(PROJECT.format(entries=args.entries)))
    broker_server = RedisServer().start()
    claims_server = RedisServer().start()
    env = {"SOAK_BROKER_URL": broker_server.url, "SOAK_CLAIMS_URL": claims_server.url}
    broker = redis.Redis.from_url(broker_server.url)
    counter = Counter(args.entries)
    faults: list[Fault] = []
    generation = [0] * args.replicas
    started: list[CeleryProcess] = []
    publishers: dict[int, str] = {}  # pid -> replica name, to name the origin of a duplicate

    def start_replica(index: int) -> CeleryProcess:
        name = f"beat-{index}.{generation[index]}"
        beat = CeleryProcess.beat("soak", cwd=workdir, workdir=workdir, name=name, env=env)
        started.append(beat)
        beat.start()
        publishers[beat.pid] = name
        return beat

    print(
        f"soak: {args.replicas} replicas x {args.entries} entries every second, "
        f"{args.minutes:g} min, seed {args.seed}, faults every {args.fault_every[0]:g}-"
        f"{args.fault_every[1]:g} s; work directory {workdir}",
        flush=True,
    )
    beats = [start_replica(i) for i in range(args.replicas)]
    for beat in beats:
        wait_until(
            lambda b=beat: "fork scheduler: backend" in b.log(),
            timeout=120,
            what=f"{beat.log_path.name} to start",
        )
    start = time.time()
    fault_end = start + args.minutes * 60
    next_fault = start + rng.uniform(*args.fault_every)
    resume: tuple[float, int] | None = None  # (when, replica) of a SIGSTOPped replica
    claims_up_at: float | None = None  # when to start the stopped claims Redis again
    crashed: list[str] = []
    last_report = start
    try:
        while True:
            now = time.time()
            if resume and now >= resume[0]:
                beats[resume[1]].signal(signal.SIGCONT)
                resume = None
            if claims_up_at and now >= claims_up_at:
                claims_server.start()
                faults[-1].window = (faults[-1].at - 1, time.time() + RESTART_AFTER)
                faults[-1].detail += f", up after {time.time() - faults[-1].at:.1f} s"
                claims_up_at = None
            busy = resume is not None or claims_up_at is not None
            if now >= next_fault and now < fault_end and not busy:
                kind = rng.choice(kinds)
                target = rng.randrange(args.replicas)
                if kind == "kill":
                    beats[target].kill()
                    generation[target] += 1
                    beats[target] = start_replica(target)
                    faults.append(
                        Fault(kind, now, f"beat-{target}", (now - GRACE, now), KILL_ALLOWANCE)
                    )
                elif kind == "stop":
                    seconds = rng.uniform(5, 15)
                    beats[target].signal(signal.SIGSTOP)
                    resume = (now + seconds, target)
                    faults.append(Fault(kind, now, f"beat-{target} for {seconds:.1f} s"))
                elif kind == "restart":
                    claims_server.stop()
                    claims_up_at = now + rng.uniform(1, 4)
                    faults.append(Fault(kind, now, "claims Redis restarted empty"))
                else:
                    client = redis.Redis.from_url(claims_server.url)
                    client.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
                    client.close()
                    faults.append(
                        Fault(
                            kind,
                            now,
                            "claims Redis CLIENT PAUSE 5000 ALL",
                            (now, now + PAUSE_MS / 1000 + GRACE),
                        )
                    )
                print(
                    f"  {time.time() - start:7.1f} s fault {kind}: {faults[-1].detail}", flush=True
                )
                next_fault = now + rng.uniform(*args.fault_every)
            for index, beat in enumerate(beats):
                if not beat.alive():
                    crashed.append(beat.log_path.name)
                    generation[index] += 1
                    beats[index] = start_replica(index)
                    print(
                        f"  {now - start:7.1f} s replica {index} DIED on its own: restarted",
                        flush=True,
                    )
            drain(broker, counter)
            if now - last_report >= 60:
                last_report = now
                print(f"  {now - start:7.1f} s {counter.messages} messages", flush=True)
            if now >= fault_end + SETTLE and not busy:
                break
            time.sleep(0.25)
        stop = time.time()
        for beat in beats:
            beat.stop()
        drain(broker, counter)
    finally:
        for beat in started:
            beat.stop()
        broker.close()
        broker_server.cleanup()
        claims_server.cleanup()

    windows = [f for f in faults if f.window]
    left = {id(f): f.allowance for f in windows}
    expected = received = duplicated = in_window = outside = 0
    outside_slots: list[str] = []
    first = int(start + HEAD) + 1
    last = int(stop - TAIL)
    for second in range(first, last + 1):
        row = counter.per_second.get(second, bytes(args.entries))
        covering = [f for f in windows if f.window and f.window[0] <= second <= f.window[1]]
        for index in range(args.entries):
            expected += 1
            if row[index]:
                received += 1
            elif taken_from_window(covering, left):
                in_window += 1
            else:
                outside += 1
                if len(outside_slots) < 20:
                    outside_slots.append(
                        f"e-{index:04}@{datetime.fromtimestamp(second, timezone.utc):%T}"
                    )
    for row in counter.per_second.values():
        duplicated += sum(count - 1 for count in row if count > 1)

    print()
    print(
        f"soak result ({(stop - start) / 60:.1f} min of slots, {args.replicas} replicas x "
        f"{args.entries} entries every second, seed {args.seed})"
    )
    print(f"  faults: {len(faults)}")
    for fault in faults:
        print(f"    {fault.at - start:7.1f} s {fault.kind:8} {fault.detail}")
    print(f"  replicas that died on their own: {len(crashed)} {crashed if crashed else ''}")
    print(f"  messages at the broker: {counter.messages} ({counter.foreign} not of the soak)")
    print(f"  slots expected:   {expected}")
    print(f"  slots received:   {received}")
    print(f"  duplicated:       {duplicated}")
    print(f"  missed:           {in_window + outside}")
    print(f"    inside stated windows:  {in_window}")
    print(f"    outside any window:     {outside} {outside_slots if outside_slots else ''}")
    if counter.duplicates:
        print_duplicates(counter, faults, publishers, start)
    if args.keep:
        print(f"  logs: {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if duplicated == 0 and outside == 0 and not crashed else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
