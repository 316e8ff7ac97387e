"""Several real `celery beat -S fork` replicas on one real Redis: each slot published once.

The broker is counted directly (no worker consumes the queue), so every published message is
seen, duplicates included.
"""

from __future__ import annotations

import shutil
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler import every
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import broker_fires, start_beats, write_project

pytestmark = pytest.mark.e2e

ENTRIES = 200
#: Slots this close to a replica start or the end of the run are not expected.
MARGIN = timedelta(seconds=3)


def many_entries(count: int) -> str:
    return f"""
app.conf.beat_schedule = {{
    f"entry-{{i:03}}": {{"task": "record", "schedule": every(1).seconds}} for i in range({count})
}}
"""


def expected_slots(start: datetime, end: datetime) -> list[datetime]:
    return list(every(1).seconds.slots(start, end))


def start_replicas(
    module: str,
    workdir: Path,
    env: dict[str, str],
    processes: list[CeleryProcess],
    count: int,
    prefixes: list[list[str]] | None = None,
) -> list[CeleryProcess]:
    replicas = [
        CeleryProcess.beat(
            module,
            cwd=workdir,
            workdir=workdir,
            name=f"beat-{i}",
            env=env,
            prefix=(prefixes[i] if prefixes else ()),
        )
        for i in range(count)
    ]
    start_beats(replicas, processes, timeout=90)
    return replicas


def test_three_replicas_publish_every_slot_exactly_once_through_kill_and_pause(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, many_entries(ENTRIES))
    env = {"TEST_BROKER_URL": redis_url}
    client = redis.Redis.from_url(redis_url)
    replicas = start_replicas(module, workdir, env, processes, 3)
    start = datetime.now(timezone.utc)

    # 60 s in all: a kill and a 10 s pause in the middle.
    time.sleep(20)
    replicas[0].kill()
    replicas[1].signal(signal.SIGSTOP)
    paused_at = datetime.now(timezone.utc)
    time.sleep(10)
    replicas[1].signal(signal.SIGCONT)
    time.sleep(30)
    end = datetime.now(timezone.utc)
    for replica in replicas:
        replica.stop()

    fires = broker_fires(client)
    slots = expected_slots(start + MARGIN, end - MARGIN)
    expected = {f"entry-{i:03}": slots for i in range(ENTRIES)}
    assert fires.duplicates() == 0, dump_logs(processes)
    assert fires.missed(expected) == {}, dump_logs(processes)
    # The paused replica published nothing stale after SIGCONT: all slots are distinct (above),
    # and no message of a slot from the pause was published twice.
    assert paused_at < end


def test_replicas_with_skewed_clocks_never_duplicate_nor_fire_early(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    if shutil.which("faketime") is None:
        pytest.skip(
            "needs Debian's faketime (libfaketime); scripts/bootstrap.sh installs it as root"
        )
    module = write_project(workdir, many_entries(50))
    env = {"TEST_BROKER_URL": redis_url}
    client = redis.Redis.from_url(redis_url)
    skews = [["faketime", "-f", "+5s"], ["faketime", "-f", "-5s"], []]
    start_replicas(module, workdir, env, processes, 3, prefixes=skews)
    start = datetime.now(timezone.utc)
    published_at: dict[str, float] = {}
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        # Record when each slot first appears at the broker (by this, unskewed, clock).
        for raw_slot in _slots_in_queue(client):
            published_at.setdefault(raw_slot, time.time())
        time.sleep(0.05)
    end = datetime.now(timezone.utc)
    for process in processes:
        process.stop()

    fires = broker_fires(client)
    assert fires.duplicates() == 0, dump_logs(processes)
    slots = expected_slots(start + MARGIN, end - MARGIN)
    assert fires.missed({f"entry-{i:03}": slots for i in range(50)}) == {}
    # Skewed replicas schedule on Redis's clock: they take part instead of idling or retrying.
    assert all(" sent " in process.log() for process in processes), dump_logs(processes)
    assert all("off Redis TIME" in process.log() for process in processes[:2])
    early = {
        slot: seen - datetime.fromisoformat(slot).timestamp()
        for slot, seen in published_at.items()
        if seen < datetime.fromisoformat(slot).timestamp() - 0.5
    }
    assert early == {}, early


def _slots_in_queue(client: redis.Redis) -> set[str]:
    import json

    return {
        json.loads(raw)["headers"]["fork_scheduler_slot"]
        for raw in client.lrange("celery", -400, -1)
    }


def test_a_redis_outage_kills_no_replica_and_duplicates_nothing(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    from celery_fork_scheduler.testing import RedisServer

    # A Redis of its own, so that the session's server keeps running.
    server = RedisServer().start()
    try:
        module = write_project(workdir, many_entries(20))
        env = {"TEST_BROKER_URL": server.url}
        replicas = start_replicas(module, workdir, env, processes, 2)
        client = redis.Redis.from_url(server.url)
        wait_until(lambda: client.llen("celery") > 40, timeout=30, what="publishing to start")
        before = broker_fires(client)
        port = server.port
        server.stop()
        time.sleep(10)
        server.port = port
        server.start()
        client = redis.Redis.from_url(server.url)
        restarted = datetime.now(timezone.utc)
        time.sleep(12)
        end = datetime.now(timezone.utc)
        assert all(replica.alive() for replica in replicas), dump_logs(processes)
        for replica in replicas:
            replica.stop()
        after = broker_fires(client)
        # Redis restarted empty (no persistence): the queue holds what was published after it.
        assert after.duplicates() == 0, dump_logs(processes)
        slots = expected_slots(restarted + MARGIN, end - MARGIN)
        assert after.missed({f"entry-{i:03}": slots for i in range(20)}) == {}
        assert before.duplicates() == 0
        assert any("claim backend unavailable" in r.log() for r in replicas)
    finally:
        server.cleanup()
