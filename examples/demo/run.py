"""Demo: three active-active beat replicas and one worker on a throwaway real Redis.

One replica is killed (SIGKILL) half-way. At the end, per entry: the slots expected in the
window where at least one replica was healthy, the fires the worker received, duplicates.

    python examples/demo/run.py [--seconds 30] [--replicas 3]
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis

from celery_fork_scheduler.testing.examples import parse_options

HERE = Path(__file__).resolve().parent
#: Replicas need a moment to boot; slots before this are not expected.
WARMUP = timedelta(seconds=6)


def main() -> int:
    options = parse_options(
        __doc__,
        seconds=(30.0, "how long the replicas run"),
        replicas=(3, "number of beat replicas"),
    )

    from celery_fork_scheduler.testing import CeleryProcess, RedisServer, wait_until

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-demo-"))
    with RedisServer() as server:
        os.environ["DEMO_REDIS_URL"] = server.url
        sys.path.insert(0, str(HERE))
        import proj  # the demo app, configured for this Redis

        client = redis.Redis.from_url(server.url, decode_responses=True)
        env = {"DEMO_REDIS_URL": server.url}
        print(f"Redis {server.url}; logs in {workdir}", flush=True)
        worker = CeleryProcess.worker("proj", cwd=HERE, workdir=workdir, env=env)
        beats = [
            CeleryProcess.beat("proj", cwd=HERE, workdir=workdir, name=f"beat-{index + 1}", env=env)
            for index in range(options.replicas)
        ]
        try:
            worker.start()
            started = datetime.now(timezone.utc)
            for beat in beats:
                beat.start()
            print(
                f"{len(beats)} beat replicas and 1 worker running for {options.seconds:.0f} s ...",
                flush=True,
            )
            time.sleep(options.seconds / 2)
            victim = beats[0]
            victim.kill()
            print(f"killed replica beat-1 (pid {victim.pid}) with SIGKILL", flush=True)
            time.sleep(options.seconds / 2)
            ended = datetime.now(timezone.utc)
            for beat in beats:
                beat.stop()
            wait_until(
                lambda: client.llen("celery") == 0, timeout=60, what="the worker to drain the queue"
            )
            time.sleep(1.0)  # let the last task that was taken finish recording
        finally:
            for beat in beats:
                beat.stop()
            worker.stop()

        records = [json.loads(item) for item in client.lrange("demo:received", 0, -1)]
        return report(proj.app, records, started + WARMUP, ended - timedelta(seconds=1))


def report(app: object, records: list[dict[str, str]], start: datetime, end: datetime) -> int:
    """Print expected, received and duplicate fires per entry; 0 when all is well."""
    from celery_fork_scheduler.entry import entries_from_config

    entries = entries_from_config(app.conf.beat_schedule, default_timezone=app.timezone)  # type: ignore[attr-defined]
    by_entry: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for record in records:
        by_entry[record["entry"]][record["slot"]] += 1
    print(f"\nwindow checked: {start:%H:%M:%S} .. {end:%H:%M:%S} UTC")
    print(f"{'entry':32} {'expected':>8} {'received':>8} {'dups':>5} {'missed':>6}")
    failures = 0
    for name, entry in entries.items():
        expected = {slot.isoformat() for slot in entry.schedule.slots(start, end)}
        seen = by_entry[name]
        duplicates = sum(count - 1 for count in seen.values())
        missed = len(expected - set(seen))
        received = sum(seen[slot] for slot in expected)
        failures += duplicates + missed
        print(f"{name:32} {len(expected):8} {received:8} {duplicates:5} {missed:6}")
    verdict = (
        "OK: every slot fired exactly once"
        if failures == 0
        else f"PROBLEM: {failures} duplicates/misses"
    )
    print(f"\n{len(records)} task runs received in all. {verdict}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
