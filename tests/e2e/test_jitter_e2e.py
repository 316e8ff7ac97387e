"""Jitter with a real ``celery beat -S fork``, a real worker and a real Redis broker: each slot
of a jittered entry reaches the worker once, never before its slot plus its offset, with the
``fork_scheduler_publish_at`` header."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.jitter import jitter_offset
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import start_worker_and_beat, write_project

pytestmark = pytest.mark.e2e

JITTERED = """
import time


@app.task(bind=True, name="stamp")
def stamp(self):
    _recorder.rpush("test:stamped", json.dumps({
        "slot": self.request.get("fork_scheduler_slot"),
        "publish_at": self.request.get("fork_scheduler_publish_at"),
        "task_id": self.request.id,
        "received": time.time(),
    }))


app.conf.beat_schedule = {
    "spread": {"task": "stamp", "schedule": every(2).seconds, "jitter": "2s"},
}
"""

#: Beat and worker share this host's clock and schedule on Redis's (the same host): a message
#: received before its publish instant by more than this was published early.
CLOCK_TOLERANCE = 0.1


def test_a_jittered_entry_is_published_once_per_slot_never_before_its_offset(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, JITTERED)
    client = redis.Redis.from_url(redis_url)
    start_worker_and_beat(module, workdir, redis_url, processes)
    wait_until(
        lambda: client.llen("test:stamped") >= 5,
        timeout=40,
        what="five jittered runs\n" + dump_logs(processes),
    )
    stamps = [json.loads(raw) for raw in client.lrange("test:stamped", 0, -1)]
    slots = [datetime.fromisoformat(stamp["slot"]) for stamp in stamps]
    assert len(slots) == len(set(slots)), "a slot ran twice"
    ordered = sorted(slots)
    assert all(b - a == timedelta(seconds=2) for a, b in itertools.pairwise(ordered)), ordered
    for stamp, slot in zip(stamps, slots, strict=True):
        publish_at = slot + jitter_offset("spread", slot, timedelta(seconds=2))
        assert stamp["publish_at"] == publish_at.isoformat()
        assert stamp["task_id"] == task_id_for("spread", slot)
        assert stamp["received"] >= publish_at.timestamp() - CLOCK_TOLERANCE, (
            slot,
            publish_at,
            stamp["received"],
        )
    offsets = {
        datetime.fromisoformat(stamp["publish_at"]) - slot
        for stamp, slot in zip(stamps, slots, strict=True)
    }
    assert len(offsets) > 1  # the offsets differ from slot to slot
