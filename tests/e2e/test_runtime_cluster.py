"""Runtime entries reach every real beat replica: add, update, pause, resume, remove.

Three ``celery beat -S fork`` replicas run a project with no static entries. The test process
steers them only through ``celery_fork_scheduler.Manager(app)`` on an app with the same broker.
No worker runs: every message published is counted in the broker's ``celery`` list, so a
duplicate would be seen.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import Manager, StaleVersionError, every
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import beat_replicas, broker_fires, decode_body, start_beats, write_project

pytestmark = pytest.mark.e2e

NAME = "runtime-every-1s"
#: fork_scheduler_refresh_interval (its default) and the entry's interval, in seconds.
REFRESH = 1.0
INTERVAL = 1.0
#: What a replica logs when it picks up (or drops) the runtime entry.
LOADED = re.compile(rf"fork scheduler: (runtime )?entry {NAME} \(")
REMOVED = re.compile(rf"fork scheduler: (runtime )?entry {NAME} removed")


def published(client: redis.Redis) -> list[tuple[float, list[object]]]:
    """(slot as a timestamp, args) of every message of the entry in the broker, oldest first."""
    found = []
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        if message["headers"].get("fork_scheduler_entry") != NAME:
            continue
        slot = datetime.fromisoformat(message["headers"]["fork_scheduler_slot"]).timestamp()
        args = decode_body(message)[0]  # type: ignore[index]
        found.append((slot, list(args)))
    return sorted(found, key=lambda item: item[0])


def slots_after(client: redis.Redis, moment: float) -> list[float]:
    return [slot for slot, _ in published(client) if slot > moment]


def test_runtime_changes_reach_every_replica_within_one_refresh(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, "app.conf.beat_schedule = {}\n")
    env = {"TEST_BROKER_URL": redis_url}
    client = redis.Redis.from_url(redis_url)
    beats = beat_replicas(module, workdir, env, 3)
    start_beats(beats, processes)

    app = Celery("steering", broker=redis_url, set_as_current=False)
    app.conf.timezone = "UTC"
    manager = Manager(app)

    # -- add: every replica learns of it, and it fires within a few seconds ----------------
    added_at = time.time()
    job = manager.add(NAME, "record", every(1).seconds, args=["v1"], tags=["e2e"])
    assert job.version > 0
    for beat in beats:
        wait_until(
            lambda b=beat: LOADED.search(b.log()) is not None,
            timeout=REFRESH + 4,
            what=f"{beat.log_path.name} to load the entry\n" + dump_logs(processes),
        )
    wait_until(
        lambda: len(published(client)) >= 3, timeout=10, what="3 slots\n" + dump_logs(processes)
    )
    first_slot = published(client)[0][0]
    assert first_slot - added_at <= REFRESH + INTERVAL + 1.5, first_slot - added_at

    # -- update with the version read; a stale update is refused --------------------------
    updated = manager.update(NAME, args=["v2"], expected_version=job.version)
    assert updated.version > job.version
    with pytest.raises(StaleVersionError):
        manager.update(NAME, args=["stale"], expected_version=job.version)
    current = manager.get(NAME)
    assert current.version == updated.version and current.args == ("v2",)
    changed_at = time.time()
    wait_until(
        lambda: any(args == ["v2"] for slot, args in published(client) if slot > changed_at),
        timeout=REFRESH + INTERVAL + 4,
        what="the update to be published\n" + dump_logs(processes),
    )
    assert not any(args == ["stale"] for _, args in published(client))

    # -- pause: no slot after pause + 2 s is published ---------------------------------------
    manager.pause(NAME, note="e2e pause")
    paused_at = time.time()
    assert manager.is_paused(NAME).paused
    time.sleep(2 + 3 * INTERVAL)  # three slots' worth after the 2 s allowance
    assert slots_after(client, paused_at + 2) == [], dump_logs(processes)

    # -- resume: it fires again ---------------------------------------------------------------
    manager.resume(NAME)
    resumed_at = time.time()
    wait_until(
        lambda: len(slots_after(client, resumed_at)) >= 2,
        timeout=INTERVAL + 5,
        what="slots after resume\n" + dump_logs(processes),
    )

    # -- remove: every replica drops it, nothing more is published ---------------------------
    manager.remove(NAME)
    removed_at = time.time()
    for beat in beats:
        wait_until(
            lambda b=beat: REMOVED.search(b.log()) is not None,
            timeout=REFRESH + 4,
            what=f"{beat.log_path.name} to drop the entry\n" + dump_logs(processes),
        )
    time.sleep(2 + 3 * INTERVAL)
    assert slots_after(client, removed_at + 2) == [], dump_logs(processes)
    with pytest.raises(KeyError):
        manager.get(NAME)
    for beat in beats:
        assert beat.alive(), dump_logs(processes)
        beat.stop()

    # -- over the whole run: never a duplicate, no slot lost while it was active ------------
    fires = broker_fires(client)
    assert fires.duplicates() == 0, dump_logs(processes)
    slots = [slot for slot, _ in published(client)]
    before_pause = [slot for slot in slots if slot <= paused_at]
    assert before_pause == [before_pause[0] + i * INTERVAL for i in range(len(before_pause))], (
        before_pause
    )
    after_resume = [slot for slot in slots if slot > resumed_at]
    assert after_resume == [after_resume[0] + i * INTERVAL for i in range(len(after_resume))], (
        after_resume
    )
