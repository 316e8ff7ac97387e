"""Scenario 7: a worker SIGKILLed inside a singleton task (the pattern of
tests/e2e/test_singleton.py, with the claims on their own Redis and a 4 s singleton lease)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from e2e.test_singleton import kill_inside_singleton
from e2e.test_singleton import project as singleton_project

from celery_fork_scheduler import every

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
    seen = kill_inside_singleton(
        module,
        workdir,
        env,
        processes,
        markers=claims,
        runs=broker,
        first_within=20,
        hold=LEASE + 1,
        lease=LEASE,
        second_within=15,
    )
    runs, first, killed, freed, held = seen.runs, seen.first, seen.killed, seen.freed, seen.held
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
