"""Issue 16, item 1: a poisoned runtime record does not stop a real ``celery beat -S fork``.

One replica starts with a static entry, a valid runtime entry and a runtime record whose JSON is
nested 990 deep (``json.loads`` raises ``RecursionError``); a second poisoned record arrives while
it runs. Beat keeps publishing both good entries, reports each poisoned one by name, and
``celery schedule list`` prints one line for each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import broker_fires, run_python, write_project

pytestmark = pytest.mark.e2e

KEYS = Keys("scheduler:")
POISON = '{"schema": 1, "task": "record", "args": ' + "[" * 990 + "]" * 990 + "}"
GOOD = json.dumps({"schema": 1, "task": "record", "schedule": {"type": "interval", "every": 1}})


def store_raw(client: redis.Redis, name: str, raw: str) -> None:
    """A runtime record as the Manager writes it, with ``raw`` as its value."""
    version = client.incr(KEYS.runtime_version)
    client.hset(KEYS.runtime_entries, name, raw)
    client.zadd(KEYS.runtime_changes, {name: version})


def test_beat_keeps_publishing_while_poisoned_records_are_reported(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(
        workdir, 'app.conf.beat_schedule = {"static": {"task": "record", "schedule": 1.0}}\n'
    )
    client = redis.Redis.from_url(redis_url)
    store_raw(client, "good", GOOD)
    store_raw(client, "poisoned", POISON)
    beat = CeleryProcess.beat(
        module, cwd=workdir, workdir=workdir, env={"TEST_BROKER_URL": redis_url}
    )
    processes.append(beat)
    beat.start()

    def published_twice() -> bool:
        fires = broker_fires(client)
        return len(fires.slots("static")) >= 2 and len(fires.slots("good")) >= 2

    wait_until(published_twice, timeout=30, what="both good entries\n" + dump_logs(processes))
    store_raw(client, "poisoned-late", POISON)
    before = {name: len(broker_fires(client).slots(name)) for name in ("static", "good")}
    wait_until(
        lambda: all(len(broker_fires(client).slots(n)) >= c + 2 for n, c in before.items()),
        timeout=30,
        what="publishing after the late poison\n" + dump_logs(processes),
    )
    assert beat.alive()
    log = beat.log()
    assert "runtime entry skipped" in log and "'poisoned'" in log and "'poisoned-late'" in log
    assert set(broker_fires(client).counts) == {"static", "good"}
    assert broker_fires(client).duplicates() == 0

    listed = run_python(workdir, redis_url, "-m", "celery", "-A", module, "schedule", "list")
    assert listed.returncode == 0, listed.stderr
    for name in ("poisoned", "poisoned-late"):
        lines = [line for line in listed.stderr.splitlines() if repr(name) in line]
        assert len(lines) == 1, listed.stderr
    assert "Traceback" not in listed.stderr
    client.close()
