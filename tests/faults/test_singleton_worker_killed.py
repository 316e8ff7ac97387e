"""Scenario 7: a worker SIGKILLed inside a singleton task (the pattern of
tests/e2e/test_singleton.py, with the claims on their own Redis and a 4 s singleton lease)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from e2e.test_singleton import project as singleton_project
from e2e.test_singleton import recorded_runs, start_cluster, starts

from celery_fork_scheduler import every
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import PROJECT_HEAD, dump_logs, write_project
from .report import build

pytestmark = pytest.mark.e2e

#: ``fork_scheduler_singleton_lease``: a dead worker's running marker expires after this.
LEASE = 4.0
INTERVAL = 2.0
#: docs/singleton.md and guarantees.md: "a dead worker frees it within its lease". Every slot
#: until the marker expires is skipped as busy (by design, not a miss); the first slot after
#: it must run. The window in which slots may be skipped: the kill plus LEASE plus one poll.
FREED_WITHIN = LEASE + 1
BODY = (
    PROJECT_HEAD
    + f"""
app.conf.fork_scheduler_singleton_lease = {LEASE}
app.conf.beat_schedule = {{
    "long-singleton": {{
        "task": "slow",
        "schedule": every({int(INTERVAL)}).seconds,
        "args": [60],
        "singleton": True,
    }},
}}
"""
)


def test_a_worker_killed_inside_a_singleton_frees_it_within_its_lease(
    env, workdir, processes, claims_server, report
) -> None:
    module = write_project(workdir, singleton_project(BODY))
    broker = redis.Redis.from_url(env["TEST_BROKER_URL"], decode_responses=True)
    claims = redis.Redis.from_url(claims_server.url, decode_responses=True)
    began = time.monotonic()
    workers, beats = start_cluster(
        module, workdir, env, processes, beats=2, workers=1, concurrency=2
    )
    marker = "scheduler:{long-singleton}:running"
    wait_until(lambda: starts(broker) >= 1, timeout=20, what="a run\n" + dump_logs(processes))
    first = recorded_runs(broker)[0]
    time.sleep(LEASE + 1)  # the heartbeat keeps the marker past the lease while it runs
    held = claims.get(marker) == first.task_id and starts(broker) == 1

    workers[0].kill()
    killed = time.time()
    fresh = CeleryProcess.worker(module, cwd=workdir, workdir=workdir, name="w-fresh", env=env)
    processes.append(fresh)
    fresh.start()
    wait_until(
        lambda: claims.get(marker) != first.task_id,
        timeout=LEASE + 3,
        what="the marker of the killed run to expire\n" + dump_logs(processes),
    )
    freed = time.time()
    wait_until(
        lambda: starts(broker) >= 2,
        timeout=15,
        what="a run on the fresh worker\n" + dump_logs(processes),
    )
    for beat in beats:
        beat.stop()
    fresh.kill()

    runs = recorded_runs(broker)
    counts: dict[str, dict[str, int]] = {"long-singleton": {}}
    for run in runs:
        counts["long-singleton"][run.slot] = counts["long-singleton"].get(run.slot, 0) + 1
    # Expected: the first run, and the first slot at or after the marker was seen gone.
    due_after = every(int(INTERVAL)).seconds.slots(
        datetime.fromtimestamp(freed, timezone.utc) - timedelta(microseconds=1),
        datetime.fromtimestamp(freed + 2 * INTERVAL, timezone.utc),
    )
    bound = next(iter(due_after))
    second = runs[1]
    wanted = second.slot if second.slot_time <= bound.timestamp() else bound.isoformat()
    expected = {
        "long-singleton": [datetime.fromisoformat(first.slot), datetime.fromisoformat(wanted)]
    }
    result = build(
        "7 worker killed inside singleton",
        counts,
        expected,
        seconds=time.monotonic() - began,
        note=f"marker freed {freed - killed:.1f}s after the kill (lease {LEASE}s)",
    )
    report(result)
    assert held, dump_logs(processes)
    assert freed - killed <= FREED_WITHIN, freed - killed
    assert result.duplicated == 0 and len({r.task_id for r in runs}) == len(runs)
    assert result.missed == 0, (runs, bound)
    assert second.hostname.startswith("w-fresh@") and first.end is None, runs
